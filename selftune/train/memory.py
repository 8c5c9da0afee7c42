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
  With a 4-bit base (QLoRA, ``bitsandbytes``) the blocks' linear weights take half a byte each
  (NF4 with double-quantised block scales); embeddings, norms and the output projection stay.
- activations: what autograd keeps per token for the backward pass, per layer about
  ``ACT_HIDDEN`` hidden-sized and ``ACT_INTERMEDIATE`` MLP-sized values (counted from a Llama block
  with LoRA on every linear layer), plus eager attention's T x T scores; with gradient
  checkpointing, one hidden state per layer plus one layer's worth.
- the cross-entropy runs over the vocabulary projection in chunks of positions (``ce_chunk``), so
  its logits never exceed ``CE_CHUNK_BYTES`` whatever the vocabulary (Gemma's is 262k).

A batch larger than the budget's micro-batch is split into micro-batches whose gradients are
accumulated, with the loss normalised over the whole batch's trained tokens, so the step equals the
one-batch step. The plan takes the first of these that fits, fastest first:

1. on a CPU, eager attention (faster there than the SDPA kernels, whose backward pass is slow on
   CPUs, but it keeps T x T scores), for examples up to ``EAGER_ATTENTION_MAX_TOKENS``;
2. SDPA attention;
3. SDPA with gradient checkpointing (it costs a second forward pass);
4. on a job with several processes, the same three with the base's decoder layers sharded over the
   processes (FSDP2: each holds 1/N of every layer and gathers a layer, and the next, while it
   runs them; the embeddings stay whole); the processes of one machine load the whole model in
   turns, each keeping only its shard, so that one whole copy at a time is in memory;
5. a 4-bit base, without then with checkpointing: automatically on CUDA when ``bitsandbytes`` is
   installed, and on any device when the model was registered with ``--qlora`` (then only these).

``SELFTUNE_TRAIN_STRATEGY`` (read by the training process) may ask for 4 always (``fsdp``) or never
(``data_parallel``) instead of when nothing else fits (``auto``, the default).

A job that fits none of them is refused before training, with the numbers.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from selftune.errors import InsufficientMemory, QuantizationUnavailable

LOADING_RUNTIME_BYTES = 400 * 2**20
"""The process while it loads the model: Python, torch and transformers imported, the data rendered."""
RUNTIME_BYTES = {"cpu": 1550 * 2**20, "cuda": 800 * 2**20}
"""The recipe process besides weights and activations. On a CPU: Python, torch, transformers, the
tokenizer, the data, and what the allocator keeps despite ``malloc_trim`` (``make bench`` on
2026-12-01 23:20 UTC with this value: predicted against measured peak +5% on SmolLM2's
200-example job, -10% on its 800-example job, -0% on Qwen2.5-0.5B's). On CUDA: the context and the caching
allocator's slack, a guess: not measured, no GPU was available."""
ACT_HIDDEN = 16
ACT_INTERMEDIATE = 5
"""Values kept per token per layer for backward, in units of hidden size and MLP width."""
CE_CHUNK_BYTES = 256 * 2**20
"""Logits of one cross-entropy chunk (bf16 out, fp32 copy, fp32 softmax): its length adapts to the vocabulary."""
MICRO_TOKENS_MAX = {"cpu": 1024, "cuda": 8192}
"""Micro-batches larger than this gain no speed, only memory. Measured on a 2-core CPU, 200 chat
examples, batch size 8: the same loop time at 1,024 tokens as at 4,096, with a peak of 3.2 GB
instead of 4.2 GB. A GPU needs larger ones to keep busy."""
NF4_BYTES = 0.52
"""Bytes per 4-bit weight: half a byte, plus a block scale per 64 weights, itself 8-bit with a float
scale per 256 blocks (``bnb_4bit_use_double_quant``)."""
QUANT_BLOCK = 64
"""bitsandbytes quantises in blocks of 64 inputs; on a CPU a layer narrower than that cannot be run."""
EAGER_ATTENTION_MAX_TOKENS = 1024
"""Longest examples for which a CPU plan may choose eager attention (measured on ``make bench``'s
data, longest example 373 tokens: 13% more tokens/s than SDPA, 0.6 GB more at the peak)."""
EAGER_SCORE_BYTES = {True: 6, False: 8}
"""Bytes eager attention keeps per score (bf16: the float32 softmax and its bf16 copy; fp32: two)."""
HEADROOM = 0.85
"""Share of the free memory a plan may use: the server and the allocator's slack need the rest."""


@dataclass(frozen=True)
class ModelShape:
    parameters: int
    embedding_parameters: int
    """The input embeddings and the output projection: never quantised."""
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
        parameters, embeddings = _parameter_count(Path(folder))
        return cls(
            parameters=parameters,
            embedding_parameters=embeddings,
            file_bytes=sum(f.stat().st_size for f in Path(folder).glob("*.safetensors")),
            layers=int(config["num_hidden_layers"]),
            hidden=int(config["hidden_size"]),
            intermediate=int(config.get("intermediate_size") or 4 * config["hidden_size"]),
            heads=int(config["num_attention_heads"]),
            vocab=int(config["vocab_size"]),
        )


def _parameter_count(folder: Path) -> tuple[int, int]:
    """Parameters in the safetensors files, and how many of them are embeddings or the output
    projection, read from their headers (no weights loaded)."""
    from safetensors import safe_open

    total = embeddings = 0
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="np") as st:
            for name in st.keys():  # noqa: SIM118 (safe_open is not a mapping)
                n = 1
                for d in st.get_slice(name).get_shape():
                    n *= int(d)
                total += n
                if "embed" in name or name.startswith("lm_head"):
                    embeddings += n
    return total, embeddings


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
    attention: str
    """``eager`` or ``sdpa``: how the model is loaded."""
    quantized: bool
    """A 4-bit base (QLoRA): the frozen linear weights in NF4, LoRA on top in full precision."""
    sharded: bool
    """The decoder layers sharded over the job's processes (FSDP2)."""
    peak: int
    """Predicted peak resident memory of the training process."""
    fits: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        return (
            f"Memory plan: predicted peak {_gb(self.peak)} of a {_gb(self.budget)} budget ({self.budget_source}); "
            f"weights {_gb(self.weights)}{' (4-bit base, QLoRA)' if self.quantized else ''}"
            f"{' (decoder layers sharded over the processes, FSDP2)' if self.sharded else ''}, activations "
            f"{self.per_token * 1000 / 2**20:.0f} MB per 1,000 tokens, micro-batches of up to {self.micro_tokens:,} "
            f"tokens, cross-entropy in chunks of {self.ce_chunk:,} positions, {self.attention} attention, "
            f"gradient checkpointing {'on' if self.checkpointing else 'off'}"
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
    """Bytes a job's process may use, and where the number comes from. Under torchrun the processes
    of one machine share its RAM, or a GPU when there are more processes than GPUs, and each holds
    a whole copy of the model (data parallel): each plans within its share."""
    share = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    setting = os.environ.get("SELFTUNE_TRAIN_MEMORY")
    if device == "cuda":
        import torch

        share = -(-share // max(1, torch.cuda.device_count()))
    if setting:
        total, source = parse_bytes(setting), "SELFTUNE_TRAIN_MEMORY"
    elif device == "cuda":
        total, source = int(torch.cuda.mem_get_info()[0] * HEADROOM), "free GPU memory"
    else:
        total, source = int(available_ram() * HEADROOM), "free RAM"
    return total // share, source + (f" shared by {share} processes" if share > 1 else "")


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
    if eager:  # T x T scores per head
        per_layer += shape.heads * width * EAGER_SCORE_BYTES[bytes_per == 2]
    if checkpointing:  # one hidden state per layer, plus the one layer being recomputed
        return shape.layers * shape.hidden * bytes_per + per_layer
    return shape.layers * per_layer


Quantize = Literal["never", "auto", "always"]
"""A 4-bit base: never, when nothing else fits (on CUDA with ``bitsandbytes``), or always (``--qlora``)."""
Shard = Literal["never", "auto", "always"]
"""Decoder layers sharded over a job's processes: never, when the whole base does not fit, or always."""
STRATEGIES: dict[str, Shard] = {"auto": "auto", "data_parallel": "never", "fsdp": "always"}
"""``SELFTUNE_TRAIN_STRATEGY``'s values."""


def plan(
    shape: ModelShape,
    *,
    longest: int,
    batch_tokens: int,
    bf16: bool,
    lora_parameters: int,
    budget_bytes: int,
    budget_source: str,
    device: str = "cpu",
    quantize: Quantize = "never",
    rows_per_example: int = 1,
    world: int = 1,
    local: int = 1,
    shard: Shard = "auto",
) -> Plan:
    """The plan for a job whose longest row has ``longest`` tokens and whose largest batch pads
    to ``batch_tokens``: the first option in the module's order that fits. An example is
    ``rows_per_example`` rows that go through the model together (2 for a DPO pair: the loss needs
    both log-probabilities). ``world``: the job's processes; ``local``: those of them sharing this
    machine's budget (``budget_bytes`` is one process's share). Raises ``InsufficientMemory`` when
    even one example does not fit."""
    bytes_per = 2 if bf16 else 4
    lora_state = lora_parameters * 16  # fp32 weight, gradient and two Adam moments
    ce_chunk = max(16, CE_CHUNK_BYTES // (shape.vocab * 10))
    ce_bytes = min(ce_chunk, batch_tokens) * shape.vocab * 10
    runtime = RUNTIME_BYTES.get(device, RUNTIME_BYTES["cpu"])
    eager_ok = device == "cpu" and longest <= EAGER_ATTENTION_MAX_TOKENS
    kinds = [(True, False)] if eager_ok else []  # (eager attention, checkpointing) on a full-precision base
    kinds += [(False, False), (False, True)]
    options: list[tuple[bool, bool, bool, bool]] = []  # (4-bit base, sharded, eager attention, checkpointing)
    if quantize != "always" and (shard != "always" or world == 1):
        options += [(False, False, eager, ckpt) for eager, ckpt in kinds]
    if quantize != "always" and shard != "never" and world > 1:
        options += [(False, True, eager, ckpt) for eager, ckpt in kinds]
    if quantize != "never":
        options += [(True, False, False, False), (True, False, False, True)]
    need = 0
    for quantized, sharded, eager, checkpointing in options:
        whole = weight_bytes(shape, bytes_per, quantized)
        weights = sharded_weight_bytes(shape, bytes_per, world) if sharded else whole
        held = lora_state // (world if sharded else 1)  # LoRA lives in the layers: sharded with them
        fixed = runtime + weights + held + ce_bytes
        # Loading reads the whole weight file (memory-mapped, so it counts as resident while it is
        # read) beside the weights being built; for a 0.5B model that is the job's peak on a CPU.
        # On CUDA the file is read into host memory, not the GPU's.
        loading = LOADING_RUNTIME_BYTES + shape.file_bytes + whole if device == "cpu" else 0
        # Sharded, the machine's processes load in turns: one loads while the others hold their shards.
        loading_room = budget_bytes * local - (local - 1) * fixed if sharded else budget_bytes
        per_token = activation_bytes(shape, longest, eager=eager, checkpointing=checkpointing, bytes_per=bytes_per)
        example = longest * rows_per_example
        need = max(fixed + example * per_token, loading)
        room = budget_bytes - fixed if loading <= loading_room else 0
        fit = room // per_token if room > 0 else 0
        if fit >= example:
            micro = int(min(fit, max(MICRO_TOKENS_MAX.get(device, 1024), example), max(batch_tokens, example)))
            peak = max(fixed + micro * per_token, loading)
            attention = "eager" if eager else "sdpa"
            return Plan(
                budget_bytes,
                budget_source,
                weights,
                held,
                per_token,
                micro,
                ce_chunk,
                checkpointing,
                attention,
                quantized,
                sharded,
                peak,
                True,
            )
    how = "with gradient checkpointing and a 4-bit base" if quantize != "never" else "with gradient checkpointing"
    hint = "" if quantize != "never" else ", register the model with --qlora (a 4-bit base)"
    raise InsufficientMemory(
        f"this job needs about {_gb(need)} even one example at a time {how} (the longest example "
        f"{longest:,} tokens), and the budget is {_gb(budget_bytes)} ({budget_source}); free memory, set "
        f"SELFTUNE_TRAIN_MEMORY{hint}, or lower SELFTUNE_MAX_SEQ_LEN",
        budget_bytes,
        need,
    )


def weight_bytes(shape: ModelShape, bytes_per: int, quantized: bool) -> int:
    """The frozen model's weights: every parameter at ``bytes_per``, or with the blocks' linear
    weights in 4 bits (the embeddings, output projection and norms stay; norms are negligible)."""
    if not quantized:
        return shape.parameters * bytes_per
    blocks = shape.parameters - shape.embedding_parameters
    return int(blocks * NF4_BYTES) + shape.embedding_parameters * bytes_per


def sharded_weight_bytes(shape: ModelShape, bytes_per: int, world: int) -> int:
    """One process's frozen weights with the decoder layers sharded over ``world`` processes: the
    embeddings whole, 1/world of the layers, and two layers gathered whole (the one running and the
    next, which FSDP2 fetches ahead)."""
    blocks = (shape.parameters - shape.embedding_parameters) * bytes_per
    gathered = blocks * min(2, shape.layers) // max(1, shape.layers)
    return shape.embedding_parameters * bytes_per + blocks // world + gathered


def lora_parameters(shape: ModelShape, r: int, targets: list[str]) -> int:
    """LoRA's own parameters: ``r x (inputs + outputs)`` per adapted projection per layer."""
    mlp = {"gate_proj", "up_proj", "down_proj"}
    per_layer = sum(r * (shape.hidden + (shape.intermediate if t in mlp else shape.hidden)) for t in targets)
    return shape.layers * per_layer


def bf16_supported(device: str) -> bool:
    import torch

    if device == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())


def training_device() -> str:
    """Where this machine's jobs train: ``cuda`` when torch sees a GPU, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def qlora_problem(shape: ModelShape, device: str) -> str | None:
    """Why this model cannot train on a 4-bit base here, or None."""
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        return "a 4-bit base needs bitsandbytes (pip install bitsandbytes), which is not installed"
    narrow = [n for n in (shape.hidden, shape.intermediate) if n % QUANT_BLOCK]
    if device == "cpu" and narrow:
        return (
            f"bitsandbytes runs 4-bit layers on a CPU only when their inputs are a multiple of {QUANT_BLOCK} "
            f"wide, and this model's are {shape.hidden} and {shape.intermediate}"
        )
    return None


def refuse_qlora(name: str, folder: Path) -> None:
    """``--qlora`` on a model this machine cannot run in 4 bits: ``InvalidRequest`` with the reason."""
    from selftune.errors import InvalidRequest

    problem = qlora_problem(ModelShape.of(folder), training_device())
    if problem:
        raise InvalidRequest(f"{name}: --qlora: {problem}", param="qlora", code="qlora_unavailable")


def plan_job(
    folder: str | Path,
    *,
    longest: int,
    batch_tokens: int,
    lora_r: int,
    lora_targets: list[str],
    device: str = "cpu",
    bf16: bool | None = None,
    qlora: bool = False,
    rows_per_example: int = 1,
    world: int = 1,
    shard: Shard = "auto",
) -> Plan:
    """The plan for a job on the model in ``folder``: what the recipe follows and the estimate shows.
    ``qlora``: the model's registration asks for a 4-bit base; ``world``: the job's processes."""
    shape = ModelShape.of(folder)
    budget_bytes, budget_source = budget(device)
    problem = qlora_problem(shape, device) if qlora or device == "cuda" else None
    if qlora and problem:
        raise QuantizationUnavailable(f"the model is registered with --qlora, but {problem}")
    quantize: Quantize = "always" if qlora else "auto" if device == "cuda" and problem is None else "never"
    return plan(
        shape,
        longest=longest,
        batch_tokens=batch_tokens,
        bf16=bf16_supported(device) if bf16 is None else bf16,
        lora_parameters=lora_parameters(shape, lora_r, lora_targets),
        budget_bytes=budget_bytes,
        budget_source=budget_source,
        device=device,
        quantize=quantize,
        rows_per_example=rows_per_example,
        world=world,
        local=int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if device == "cpu" else 1,
        shard=shard,
    )
