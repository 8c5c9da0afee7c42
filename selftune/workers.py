"""What a training worker offers, as the ``workers`` table records it and operators see it.

Each running worker (``selftune worker``, or the worker thread of ``selftune serve``) keeps a row:
its host, device, GPUs, the memory it offers its jobs, its slots and the jobs it trains, refreshed
by the database's clock while it runs (``Store.worker_seen``) and removed when it stops. A worker
killed outright stops refreshing, and its row goes once it has been silent for ``STALE_LEASES``
leases. ``selftune workers`` and ``GET /v1/workers`` (an extension, for operators) list them.

A worker leaves a job to a larger worker when its base model does not fit the memory it offers
(``least_memory``: the least any memory plan needs for that model, one short example at a time) and
a live worker offers enough; when none does, it claims the job anyway. The recipe then plans within
that same offer (``SELFTUNE_TRAIN_MEMORY``), so a job that fits nowhere fails with the plan's
``insufficient_memory`` reason and numbers instead of waiting forever or running out of memory.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from selftune.config import Settings
from selftune.store import Store
from selftune.tables import WorkerRecord

STALE_LEASES = 3
"""A worker not seen for this many lease lengths is gone (killed, or its machine lost)."""

SHORT_EXAMPLE_TOKENS = 256


@dataclass(frozen=True)
class Offer:
    host: str
    device: str
    gpus: int
    memory_bytes: int
    memory_source: str
    slots: int
    started_at: int
    nproc: int = 1
    """Processes each job trains on here (``--nproc-per-node``)."""
    group: str | None = None
    nnodes: int = 1
    """With ``group``: the machines that train each job together (``selftune.groups``)."""
    address: str = ""
    """Where the group's other machines reach this one."""

    def record(self, worker_id: str, jobs: list[str]) -> WorkerRecord:
        return WorkerRecord(
            worker_id,
            self.host,
            self.device,
            self.gpus,
            self.memory_bytes,
            self.slots,
            self.started_at,
            0.0,
            jobs,
            self.nproc,
            self.group,
            self.nnodes,
        )

    def too_small(self, need: int) -> str:
        return (
            f"Worker {self.host} offers {self.memory_bytes / 2**30:.1f} GB ({self.memory_source}), and this job's "
            f"base model needs at least {need / 2**30:.1f} GB to train: it waits for a worker with more memory "
            "(`selftune workers` lists them)"
        )


def offer(settings: Settings) -> Offer:
    """This machine's offer: its training device, and the memory a job may use there (the setting,
    or what the memory plan measures: free GPU memory, or free RAM, less headroom)."""
    from selftune.train.memory import budget, training_device

    device = training_device()
    gpus = 0
    if device == "cuda":
        import torch

        gpus = torch.cuda.device_count()
    if settings.worker_memory_bytes:
        memory, source = settings.worker_memory_bytes, "SELFTUNE_WORKER_MEMORY_BYTES"
    else:
        memory, source = budget(device)
    settings.check_group()
    host = socket.gethostname()
    return Offer(
        host,
        device,
        gpus,
        memory,
        source,
        max(1, settings.worker_slots) if settings.worker_nnodes == 1 else 1,  # a group trains one job at a time
        int(time.time()),
        settings.worker_nproc_per_node or max(1, gpus),
        settings.worker_group or None,
        settings.worker_nnodes,
        settings.worker_address or host,
    )


def least_memory(base_dir: Path, device: str) -> int:
    """The least memory any plan trains this base model in: one short example at a time, with
    gradient checkpointing (and a 4-bit base where the device can run one)."""
    from selftune.errors import InsufficientMemory
    from selftune.train.memory import ModelShape, bf16_supported, lora_parameters, plan, qlora_problem
    from selftune.train.protocol import TrainConfig

    shape = ModelShape.of(base_dir)
    lora = TrainConfig(base_model_dir=str(base_dir), train_file="", output_dir="")
    quantize = "auto" if device == "cuda" and qlora_problem(shape, device) is None else "never"
    try:
        plan(
            shape,
            longest=SHORT_EXAMPLE_TOKENS,
            batch_tokens=SHORT_EXAMPLE_TOKENS,
            bf16=bf16_supported(device),
            lora_parameters=lora_parameters(shape, lora.lora_r, lora.lora_targets),
            budget_bytes=0,
            budget_source="none",
            device=device,
            quantize=quantize,  # type: ignore[arg-type]
        )
    except InsufficientMemory as e:
        return e.need
    return 0


def cpu_threads(store: Store, mine: Offer, lease_seconds: float) -> int | None:
    """On a CPU, the threads of one training process: the cores of this host shared out between
    the training processes its workers may run (slots times processes per job; the workers table
    says how many): two jobs that each start a thread per core fight over the cores and take twice
    as long together as one after the other. None on CUDA, or where ``OMP_NUM_THREADS`` is set."""
    if mine.device != "cpu" or "OMP_NUM_THREADS" in os.environ:
        return None
    seen = store.list_workers(seen_within=STALE_LEASES * lease_seconds)
    here = sum(w.slots * w.nproc for w in seen if w.host == mine.host and w.device == "cpu")
    return max(1, (os.cpu_count() or 1) // (here or mine.slots * mine.nproc))
