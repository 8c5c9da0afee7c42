"""``TrainConfig``: every training setting, with ``"auto"`` values resolved once, in one place.

The job stores the resolved numbers and the API reports them, so users see exactly what ran.

Resolution of ``"auto"`` (documented in the README):

- ``n_epochs``: OpenAI's cookbook heuristic, exactly: 3 epochs, raised so that small sets see at
  least 100 examples in total (at most 25 epochs), lowered so that large sets see at most 25,000.
- ``batch_size``: about 1 per 32 examples, from 1 up to 8. Small sets keep many optimizer steps;
  larger ones use batches that keep the CPU's matrix units busy.
- ``learning_rate_multiplier``: 1.0, which means a LoRA learning rate of ``BASE_LEARNING_RATE``
  scaled by the multiplier.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

TARGET_EPOCHS = 3
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
MIN_DEFAULT_EPOCHS = 1
MAX_DEFAULT_EPOCHS = 25

BASE_LEARNING_RATE = 1e-3
"""LoRA learning rate at ``learning_rate_multiplier = 1``. LoRA tolerates (and small models on
small data need) rates well above full fine-tuning's; 1e-3 fits 135M-parameter models on 10-1000
examples in a few epochs without diverging."""


def auto_epochs(n_examples: int) -> int:
    """OpenAI's ``n_epochs: "auto"`` (cookbook data-prep notebook), unchanged."""
    n_epochs = TARGET_EPOCHS
    if n_examples * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        n_epochs = min(MAX_DEFAULT_EPOCHS, MIN_TARGET_EXAMPLES // max(1, n_examples))
    elif n_examples * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        n_epochs = max(MIN_DEFAULT_EPOCHS, MAX_TARGET_EXAMPLES // n_examples)
    return n_epochs


def auto_batch_size(n_examples: int) -> int:
    return max(1, min(8, n_examples // 32))


@dataclass
class TrainConfig:
    """What the recipe needs. Written by the worker as ``job.json``; read by ``train.lora``."""

    base_model_dir: str
    """Folder with the base model's safetensors and tokenizer."""
    train_file: str
    output_dir: str
    """Where the recipe writes events.jsonl, checkpoints/, adapter/ and metrics.csv."""
    valid_file: str | None = None
    n_epochs: int = 3
    batch_size: int = 1
    learning_rate_multiplier: float = 1.0
    seed: int = 0
    max_seq_len: int = 1024
    """Longer examples are truncated from the end (and reported before training starts)."""
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """All linear layers of a Llama-style block."""
    warmup_ratio: float = 0.05
    eval_every: int = 0
    """valid_loss on one validation batch every N steps (0: about 10 times per run); full_valid_loss on the
    whole validation file at the end of each epoch."""
    keep_checkpoints: int = 3
    precision: str = "auto"
    """``auto`` (bf16 autocast where the CPU or GPU supports it), ``bf16`` or ``fp32``."""
    init_adapter: str | None = None
    """Continue training from this adapter (an ``ft:`` model as the job's base)."""
    resume: bool = True
    """Continue from ``output_dir/state.pt`` when it exists (after a pause or a crash)."""
    eval_examples: int = 0
    """After training, compare base and fine-tuned answers on up to this many validation examples."""
    model_name: str = "fine-tuned"
    base_model_name: str = "base"
    """Names for the two models in the evaluation report."""

    @property
    def learning_rate(self) -> float:
        return BASE_LEARNING_RATE * self.learning_rate_multiplier

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_hyperparameters(requested: dict[str, Any] | None, n_examples: int) -> dict[str, Any]:
    """Turn ``"auto"`` (or missing) hyperparameters into the numbers that will be used."""
    req = requested or {}

    def pick(key: str, auto: Any) -> Any:
        value = req.get(key)
        return auto if value in (None, "auto") else value

    return {
        "n_epochs": int(pick("n_epochs", auto_epochs(n_examples))),
        "batch_size": int(pick("batch_size", auto_batch_size(n_examples))),
        "learning_rate_multiplier": float(pick("learning_rate_multiplier", 1.0)),
    }
