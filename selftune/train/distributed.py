"""One job on many processes: the recipe's side of ``torch.distributed``.

A job the worker gives more than one process runs the same recipe under torchrun (the worker starts
it through ``selftune.train.launch``). ``World`` is all the recipe knows of that: its rank, the
world's size, which rank is the *main* one, and the few collectives the recipe needs. On one
process ``World`` is a world of one, and every method is a no-op, so the recipe has one code path.

The strategy is data parallel over the LoRA parameters: each rank holds the whole frozen base and
the adapter, takes its slice of every batch (``part``), and the adapter's gradients are summed over
the ranks before the optimizer step (``sum_gradients``: one flat all-reduce, as DDP's buckets do;
DDP itself is not used because the recipe's loss calls the decoder under the peft wrapper, which
DDP's forward hook would not see). Each rank divides its loss by the whole batch's trained-token
count, which every rank computes from the same rendered data, so the summed gradient is exactly the
one-process gradient of the mean loss, and the summed metrics are the batch's. When the memory plan
finds that the whole base does not fit a process's share of the memory, the decoder layers are
sharded over the ranks instead (FSDP2, ``load_sharded``), with the same shares and the same sums.

The main rank (the lowest rank on the worker that claimed the job: ``SELFTUNE_HEAD``) alone writes
events, metrics, checkpoints and the resumable state, evaluates, and decides pauses and orphaning;
``decide`` broadcasts its decision and ``agree`` its results (the memory plan, the resumed state),
so every rank takes the same path. A rank that dies closes its gloo or NCCL connections, and the
others fail at their next collective instead of waiting: torchrun then ends them all.

Gloo on a CPU, NCCL on CUDA (each rank on GPU ``local_rank`` modulo the GPUs it sees).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch

from selftune.errors import SelftuneError

T = TypeVar("T")

COLLECTIVE_TIMEOUT = timedelta(hours=6)
"""How long a rank waits for the others at a collective. The main rank evaluates and checks the
model alone (the quality guard generates answers) while the rest wait; a dead rank is noticed at
once through its closed connection, not through this timeout."""

CONTINUE, PAUSE, STOP = 0, 1, 2
"""The main rank's decision before each step (``decide``)."""


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    main_rank: int = 0
    backend: str = ""
    sharded: bool = False
    """The base's decoder layers and their LoRA parameters are sharded over the ranks (FSDP2)."""

    @property
    def main(self) -> bool:
        return self.rank == self.main_rank

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def strategy(self) -> str:
        """How the job's events describe it."""
        if not self.distributed:
            return "one process"
        how = "fully sharded data parallel, FSDP2" if self.sharded else "data parallel"
        return f"{self.size} processes, {how} ({self.backend})"

    @classmethod
    def join(cls) -> World:
        """The world torchrun started this process in (its environment says), or a world of one."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return cls()
        import torch.distributed as dist

        backend = "nccl" if torch.cuda.is_available() else "gloo"
        local_rank = int(os.environ["LOCAL_RANK"])
        if backend == "nccl":
            torch.cuda.set_device(local_rank % torch.cuda.device_count())
        dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
        rank = dist.get_rank()
        # The main rank is the lowest on the head node (the worker that claimed the job and relays its
        # events), wherever the rendezvous put rank 0.
        head = os.environ.get("SELFTUNE_HEAD", "1") == "1"
        lowest = torch.tensor([rank if head else size], device=_device(backend))
        dist.all_reduce(lowest, op=dist.ReduceOp.MIN)
        return cls(rank, size, local_rank, int(os.environ["LOCAL_WORLD_SIZE"]), int(lowest), backend)

    def device(self) -> torch.device:
        if self.backend == "nccl" or (not self.distributed and torch.cuda.is_available()):
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def part(self, idx: Sequence[int]) -> list[int]:
        """This rank's share of a batch: every ``size``-th example from its rank on (a batch's examples
        are in length order, so the shares pad alike)."""
        return list(idx[self.rank :: self.size])

    def load_sharded(self, build: Callable[[], Any], released: Callable[[], None]) -> tuple[Any, World]:
        """The model ``build()`` makes, its decoder layers sharded over the ranks (FSDP2's
        ``fully_shard``), and this world marked sharded. The embeddings, the final norm and the output
        projection stay whole: they are frozen, and the chunked cross-entropy reads the projection's
        weight directly. The ranks of one machine build in turns and each keeps only its shard, so
        one whole copy at a time is in its memory (``released`` hands the copy's memory back to the
        OS); then every rank takes the main rank's trainable values (a new adapter's initialisation)."""
        from dataclasses import replace

        from torch.distributed.fsdp import fully_shard

        model: Any = None
        first: dict[str, torch.Tensor] = {}
        for turn in range(self.local_size):
            if turn == self.local_rank:
                model = build()
                if self.main:
                    first = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
                causal = model.get_base_model() if hasattr(model, "get_base_model") else model
                for layer in causal.get_decoder().layers:
                    fully_shard(layer)
                released()
            self.wait()
        sharded = replace(self, sharded=True)
        sharded.restore(model, self.agree(lambda: first))
        return model, sharded

    def sum_gradients(self, params: list[torch.Tensor]) -> None:
        """Sum the parameters' gradients over the ranks, in one flat buffer (a rank whose share of the
        batch was empty contributes zeros). Sharded parameters were reduced by FSDP2 already, as a
        mean: times the world's size, that is the sum (gloo has no pre-scaled sum to ask it for)."""
        if not self.distributed:
            return
        import torch.distributed as dist
        from torch.distributed.tensor import DTensor

        if self.sharded:
            for p in params:
                if isinstance(p, DTensor) and p.grad is not None:
                    p.grad.mul_(self.size)
            params = [p for p in params if not isinstance(p, DTensor)]
            if not params:
                return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        offset = 0
        for p, g in zip(params, grads, strict=True):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(p).to(p.dtype)
            offset += n

    def sum_values(self, values: dict[str, float], tokens: int) -> tuple[dict[str, float], int]:
        """Each rank's share of a step's metrics (already divided by the whole batch's count) summed."""
        if not self.distributed:
            return values, tokens
        import torch.distributed as dist

        keys = sorted(values)
        flat = torch.tensor([values[k] for k in keys] + [float(tokens)], dtype=torch.float64, device=self.device())
        dist.all_reduce(flat)
        summed = flat.tolist()
        return dict(zip(keys, summed[:-1], strict=True)), round(summed[-1])

    def decide(self, choose: Callable[[], int]) -> int:
        """The main rank's ``choose()``, the same on every rank."""
        if not self.distributed:
            return choose()
        import torch.distributed as dist

        flag = torch.tensor([choose() if self.main else 0], device=self.device())
        dist.broadcast(flag, self.main_rank)
        return int(flag)

    def agree(self, compute: Callable[[], T]) -> T:
        """The main rank's ``compute()`` on every rank; an error it raises (the memory plan's, say) is
        raised on every rank, so all end the same way."""
        if not self.distributed:
            return compute()
        import torch.distributed as dist

        box: list[Any] = [None]
        if self.main:
            try:
                box[0] = ("ok", compute())
            except SelftuneError as e:
                box[0] = ("error", e)
        dist.broadcast_object_list(box, self.main_rank, device=self.device())
        kind, value = box[0]
        if kind == "error":
            raise value
        return value

    def share_parameters(self, params: list[torch.Tensor]) -> None:
        """The main rank's values of ``params`` on every rank (a new adapter's initialisation, a
        resumed one's weights): the ranks start from the very same model."""
        if not self.distributed:
            return
        import torch.distributed as dist

        for p in params:
            dist.broadcast(p.data, self.main_rank)

    def full_adapter(self, model: Any) -> dict[str, Any]:
        """The trainable parameters, whole, on the main rank (every rank calls it)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
        return dict(get_model_state_dict(model, options=options))

    def full_optimizer(self, model: Any, optimizer: Any) -> dict[str, Any]:
        """The optimizer's state, whole, on the main rank (every rank calls it)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return dict(get_optimizer_state_dict(model, optimizer, options=options))

    def restore(
        self, model: Any, adapter: dict[str, Any], optimizer: Any = None, optim: dict[str, Any] | None = None
    ) -> None:
        """Load a whole adapter, and an optimizer's state (as ``full_adapter`` and ``full_optimizer``
        gave), into the sharded model and its optimizer (every rank calls it, with the same state)."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, strict=False)
        set_model_state_dict(model, adapter, options=options)
        if optimizer is not None and optim is not None:
            set_optimizer_state_dict(model, optimizer, optim, options=options)

    def wait(self) -> None:
        """Wait for every rank (while the main rank evaluates, checks and saves alone)."""
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.destroy_process_group()


def _device(backend: str) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
