"""The training memory plan: what a job holds at its peak, and how the recipe fits it in a budget.

One implementation, used by the recipe (which follows the plan and reports it as a job event) and
by ``selftune estimate`` and the estimate endpoint (which report the predicted peak and whether it
fits this machine), so that the number a user is shown is the one the job acts on.

The peak of a LoRA step is, in bytes:

    runtime + weights + LoRA state + micro-batch tokens x activations per token + one logits chunk

and the job's peak is that, or loading's if higher: the weight file, read whole, beside the weights
built from it (a 0.5B model's float32 file is 2.5 GB).

- ``weights``: every parameter at the dtype the frozen base is stored in (bf16 where autocast
  computes in bf16, else fp32); LoRA's own weights, gradients and Adam moments are fp32.
- activations: what autograd keeps per token for the backward pass, per layer about
  ``ACT_HIDDEN`` hidden-sized and ``ACT_INTERMEDIATE`` MLP-sized values (counted from a Llama block
  with LoRA on every linear layer), plus eager attention's T x T scores; with gradient
  checkpointing, one hidden state per layer plus one layer's worth.
- the cross-entropy runs over the vocabulary projection in chunks of positions (``ce_chunk``), so
  its logits never exceed ``CE_CHUNK_BYTES`` whatever the vocabulary (Gemma's is 262k).

A batch larger than the budget's micro-batch is split into micro-batches whose gradients are
accumulated, with the loss normalised over the whole batch's trained tokens, so the step equals the
one-batch step. Gradient checkpointing is switched on only when one example would not fit without
it. A job whose longest example does not fit even then is refused before training, with the numbers.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

LOADING_RUNTIME_BYTES = 400 * 2**20
"""The process while it loads the model: Python, torch and transformers imported, the data rendered."""
RUNTIME_BYTES = 1150 * 2**20
"""The recipe process besides weights and activations: Python, torch, transformers, the tokenizer,
the data, and what the allocator keeps (measured: 1.5 GB resident between steps with SmolLM2's
0.35 GB of weights and LoRA state)."""
ACT_HIDDEN = 16
ACT_INTERMEDIATE = 5
"""Values kept per token per layer for backward, in units of hidden size and MLP width."""
CE_CHUNK_BYTES = 256 * 2**20
"""Logits of one cross-entropy chunk (bf16 out, fp32 copy, fp32 softmax): its length adapts to the vocabulary."""
MICRO_TOKENS_MAX = {"cpu": 1024, "cuda": 8192}
"""Micro-batches larger than this gain no speed, only memory. Measured on a 2-core CPU, 200 chat
examples, batch size 8: the same loop time at 1,024 tokens as at 4,096, with a peak of 3.2 GB
instead of 4.2 GB. A GPU needs larger ones to keep busy."""
HEADROOM = 0.85
"""Share of the free memory a plan may use: the server and the allocator's slack need the rest."""


class InsufficientMemory(ValueError):
    """The job cannot fit its budget even one example at a time with gradient checkpointing."""

    def __init__(self, message: str, budget: int) -> None:
        super().__init__(message)
        self.budget = budget


@dataclass(frozen=True)
class ModelShape:
    parameters: int
    file_bytes: int
    """Size of the weight files (float32 in selftune's converted folders), all read while loading."""
    layers: int
    hidden: int
    intermediate: int
    heads: int
    vocab: int

    @classmethod
    def of(cls, folder: str | Path) -> ModelShape:
        config = json.loads((Path(folder) / "config.json").read_text())
        config = config.get("text_config", config)  # multimodal wrappers keep the decoder's config inside
        return cls(
            parameters=_parameter_count(Path(folder)),
            file_bytes=sum(f.stat().st_size for f in Path(folder).glob("*.safetensors")),
            layers=int(config["num_hidden_layers"]),
            hidden=int(config["hidden_size"]),
            intermediate=int(config.get("intermediate_size") or 4 * config["hidden_size"]),
            heads=int(config["num_attention_heads"]),
            vocab=int(config["vocab_size"]),
        )


def _parameter_count(folder: Path) -> int:
    """Parameters in the safetensors files, read from their headers (no weights loaded)."""
    from safetensors import safe_open

    total = 0
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="np") as st:
            for name in st.keys():  # noqa: SIM118 (safe_open is not a mapping)
                n = 1
                for d in st.get_slice(name).get_shape():
                    n *= int(d)
                total += n
    return total


@dataclass(frozen=True)
class Plan:
    budget: int
    budget_source: str
    weights: int
    lora_state: int
    per_token: int
    """Activation bytes per token of a micro-batch, as planned (with checkpointing where it is on)."""
    micro_tokens: int
    """Padded tokens (rows x width) a micro-batch may hold."""
    ce_chunk: int
    """Positions per cross-entropy chunk."""
    checkpointing: bool
    peak: int
    """Predicted peak resident memory of the training process."""
    fits: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        return (
            f"Memory plan: predicted peak {_gb(self.peak)} of a {_gb(self.budget)} budget ({self.budget_source}); "
            f"weights {_gb(self.weights)}, activations {self.per_token * 1000 / 2**20:.0f} MB per 1,000 tokens, "
            f"micro-batches of up to {self.micro_tokens:,} tokens, cross-entropy in chunks of {self.ce_chunk:,} "
            f"positions, gradient checkpointing {'on' if self.checkpointing else 'off'}"
        )


def _gb(n: int) -> str:
    return f"{n / 2**30:.1f} GB"


def parse_bytes(text: str) -> int:
    """``SELFTUNE_TRAIN_MEMORY``: bytes, or a number with K, M, G or T (binary units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"SELFTUNE_TRAIN_MEMORY={text!r}: use bytes or a size like 6G or 6000M")
    return int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2).upper() or " "))


def budget(device: str = "cpu") -> tuple[int, str]:
    """Bytes a job may use, and where the number comes from."""
    setting = os.environ.get("SELFTUNE_TRAIN_MEMORY")
    if setting:
        return parse_bytes(setting), "SELFTUNE_TRAIN_MEMORY"
    if device == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info()
        return int(free * HEADROOM), "free GPU memory"
    return int(available_ram() * HEADROOM), "free RAM"


def available_ram() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def activation_bytes(shape: ModelShape, width: int, *, eager: bool, checkpointing: bool, bytes_per: int) -> int:
    """Bytes autograd keeps per token of a micro-batch padded to ``width``."""
    per_layer = (ACT_HIDDEN * shape.hidden + ACT_INTERMEDIATE * shape.intermediate) * bytes_per
    if eager:  # T x T scores per head, kept as softmax input and output
        per_layer += 2 * shape.heads * width * bytes_per
    if checkpointing:  # one hidden state per layer, plus the one layer being recomputed
        return shape.layers * shape.hidden * bytes_per + per_layer
    return shape.layers * per_layer


def plan(
    shape: ModelShape,
    *,
    longest: int,
    batch_tokens: int,
    bf16: bool,
    eager: bool,
    lora_parameters: int,
    budget_bytes: int,
    budget_source: str,
    device: str = "cpu",
) -> Plan:
    """The plan for a job whose longest example has ``longest`` tokens and whose largest batch pads
    to ``batch_tokens``. Raises ``InsufficientMemory`` when even one example does not fit."""
    bytes_per = 2 if bf16 else 4
    weights = shape.parameters * bytes_per
    lora_state = lora_parameters * 16  # fp32 weight, gradient and two Adam moments
    ce_chunk = max(16, CE_CHUNK_BYTES // (shape.vocab * 10))
    ce_bytes = min(ce_chunk, batch_tokens) * shape.vocab * 10
    fixed = RUNTIME_BYTES + weights + lora_state + ce_bytes
    # Loading reads the whole weight file (memory-mapped, so it counts as resident while it is read)
    # beside the weights being built at their dtype; for a 0.5B model that is the job's peak.
    loading = LOADING_RUNTIME_BYTES + shape.file_bytes + weights
    room = budget_bytes - fixed if loading <= budget_bytes else 0
    for checkpointing in (False, True):
        per_token = activation_bytes(shape, longest, eager=eager, checkpointing=checkpointing, bytes_per=bytes_per)
        fit = room // per_token if room > 0 else 0
        if fit >= longest:
            micro = int(min(fit, max(MICRO_TOKENS_MAX.get(device, 1024), longest), batch_tokens))
            peak = max(fixed + micro * per_token, loading)
            return Plan(
                budget_bytes, budget_source, weights, lora_state, per_token, micro, ce_chunk, checkpointing, peak, True
            )
    per_token = activation_bytes(shape, longest, eager=eager, checkpointing=True, bytes_per=bytes_per)
    need = max(fixed + longest * per_token, loading)
    raise InsufficientMemory(
        f"this job needs about {_gb(need)} even one example at a time with gradient checkpointing (weights "
        f"{_gb(weights)}, the longest example {longest:,} tokens), and the budget is {_gb(budget_bytes)} "
        f"({budget_source}); free memory, set SELFTUNE_TRAIN_MEMORY, or lower SELFTUNE_MAX_SEQ_LEN",
        budget_bytes,
    )


def lora_parameters(shape: ModelShape, r: int, targets: list[str]) -> int:
    """LoRA's own parameters: ``r x (inputs + outputs)`` per adapted projection per layer."""
    mlp = {"gate_proj", "up_proj", "down_proj"}
    per_layer = sum(r * (shape.hidden + (shape.intermediate if t in mlp else shape.hidden)) for t in targets)
    return shape.layers * per_layer


EAGER_ATTENTION_MAX_TOKENS = 256
"""Up to this length the recipe uses plain (eager) attention, faster for short examples; beyond, SDPA."""


def bf16_supported(device: str) -> bool:
    import torch

    if device == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())


def plan_job(
    folder: str | Path,
    *,
    longest: int,
    batch_tokens: int,
    lora_r: int,
    lora_targets: list[str],
    device: str = "cpu",
    bf16: bool | None = None,
) -> Plan:
    """The plan for a job on the model in ``folder``: what the recipe follows and the estimate shows."""
    shape = ModelShape.of(folder)
    budget_bytes, budget_source = budget(device)
    return plan(
        shape,
        longest=longest,
        batch_tokens=batch_tokens,
        bf16=bf16_supported(device) if bf16 is None else bf16,
        eager=longest <= EAGER_ATTENTION_MAX_TOKENS,
        lora_parameters=lora_parameters(shape, lora_r, lora_targets),
        budget_bytes=budget_bytes,
        budget_source=budget_source,
        device=device,
    )


def micro_batches(lengths: list[int], micro_tokens: int) -> list[list[int]]:
    """Split a batch (row lengths, in order) into runs of rows whose padded size fits ``micro_tokens``."""
    out: list[list[int]] = []
    current: list[int] = []
    width = 0
    for i, n in enumerate(lengths):
        if current and max(width, n) * (len(current) + 1) > micro_tokens:
            out.append(current)
            current, width = [], 0
        current.append(i)
        width = max(width, n)
    if current:
        out.append(current)
    return out
