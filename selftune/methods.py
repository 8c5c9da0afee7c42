"""Training methods and their hyperparameters, declared once: what schemas, jobs, the CLI, the
estimate and the recipe all read.

A job's hyperparameters are one ``Hyperparameters`` object from the moment they are resolved
(``Hyperparameters.resolve``, at job creation) to the recipe's ``job.json``: stored once in the job's
row, shown on the wire in OpenAI's two shapes (``common`` at the top level, ``to_dict`` under
``method.<type>.hyperparameters``), and carried whole inside ``TrainConfig``.

Resolution of ``"auto"`` (documented in docs/training.md):

- ``n_epochs``: OpenAI's cookbook heuristic, exactly: 3 epochs, raised so that small sets see at
  least 100 examples in total (at most 25 epochs), lowered so that large sets see at most 25,000.
- ``batch_size``: about 1 per 32 examples, from 1 up to 8. Small sets keep many optimizer steps;
  larger ones use batches that keep the CPU's matrix units busy.
- ``learning_rate_multiplier``: 1.0, which means a LoRA learning rate of ``BASE_LEARNING_RATE``
  scaled by the multiplier; for DPO ``DPO_LEARNING_RATE_MULTIPLIER`` (preference steps move the
  model much further per step than next-token steps do).
- ``beta`` (DPO only): ``DPO_BETA``, the value of the DPO paper and of TRL's default.
- ``rpo_alpha`` (DPO only, a selftune extension): ``DPO_RPO_ALPHA``.
- Reinforcement (GRPO, ``train.grpo``): ``batch_size`` ``RFT_BATCH_SIZE`` prompts (each answered
  ``group_size`` times, so a step grades a few dozen answers); ``learning_rate_multiplier``
  ``RFT_LEARNING_RATE_MULTIPLIER``; ``compute_multiplier`` 1.0, the group size (``group_size``: 4
  answers per prompt at 1.0, scaled and rounded, at least 2); ``eval_interval`` about five
  evaluations per run; ``eval_samples`` ``RFT_EVAL_SAMPLES`` validation prompts (or all there are);
  ``reasoning_effort`` ``medium``. The models selftune trains do not reason before answering, so
  the effort is the room an answer gets (``answer_tokens``): low 128 tokens, medium 256, high 512.

The DPO defaults were chosen by measurement (``bench/dpo_quality.py``; docs/training.md has the
table): on pairs that differ only in form, DPO alone at the former default (a LoRA rate of 5e-4)
made SmolLM2 say "Capital: Capital: ..." to every question, and at 5e-5 it still lost its end of
turn; anchored, it learns the form and keeps the content at either rate. The lower rate is the
default because it leaves more room before a model breaks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from typing import Any


class MethodType(StrEnum):
    """OpenAI's ``method.type`` values."""

    SUPERVISED = "supervised"
    DPO = "dpo"
    REINFORCEMENT = "reinforcement"


TRAINED: tuple[MethodType, ...] = (MethodType.SUPERVISED, MethodType.DPO, MethodType.REINFORCEMENT)
"""The methods selftune trains."""

TARGET_EPOCHS = 3
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
MIN_DEFAULT_EPOCHS = 1
MAX_DEFAULT_EPOCHS = 25

BASE_LEARNING_RATE = 1e-3
"""LoRA learning rate at ``learning_rate_multiplier = 1``. LoRA tolerates (and small models on
small data need) rates well above full fine-tuning's; 1e-3 fits 135M-parameter models on 10-1000
examples in a few epochs without diverging."""

DPO_BETA = 0.1
"""``beta: "auto"``: how far the model may move from the reference (larger keeps it closer)."""
DPO_LEARNING_RATE_MULTIPLIER = 0.1
"""``learning_rate_multiplier: "auto"`` on DPO jobs: a LoRA rate of 1e-4, a tenth of supervised's."""
DPO_RPO_ALPHA = 1.0
"""``rpo_alpha: "auto"`` (a selftune extension): the weight of the next-token loss on the preferred
output that DPO's loss is anchored with (RPO, Pang et al., 2024; TRL's ``rpo_alpha``)."""


RFT_BATCH_SIZE = 4
RFT_LEARNING_RATE_MULTIPLIER = 0.2
"""``learning_rate_multiplier: "auto"`` on reinforcement jobs: a LoRA rate of 2e-4."""
RFT_EVAL_SAMPLES = 32
RFT_EVALUATIONS = 5
"""``eval_interval: "auto"``: the validation reward about this many times per run."""
RFT_GROUP = 4
"""Answers sampled per prompt at ``compute_multiplier`` 1."""
RFT_KL_BETA = 0.04
"""The weight of the KL anchor to the starting model in the GRPO loss (the GRPO paper's and TRL's
former default): it keeps the model's answers ended and on topic while the reward pulls."""
RFT_BEST_CHECKPOINTS = 3
"""Reinforcement jobs keep this many checkpoints with the best validation reward (as OpenAI's do)."""
ANSWER_TOKENS = {"low": 128, "medium": 256, "high": 512}
"""``reasoning_effort`` -> the most tokens a sampled answer may have."""

METHOD_SPECIFIC = (
    "beta",
    "rpo_alpha",
    "eval_interval",
    "eval_samples",
    "compute_multiplier",
    "reasoning_effort",
)
"""Hyperparameters that only ``method.<type>.hyperparameters`` shows."""


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


def group_size(compute_multiplier: float) -> int:
    """Answers sampled per prompt in a reinforcement step: more compute, larger groups."""
    return max(2, round(RFT_GROUP * compute_multiplier))


def answer_tokens(reasoning_effort: str | None) -> int:
    return ANSWER_TOKENS.get(reasoning_effort or "medium", ANSWER_TOKENS["medium"])


@dataclass(frozen=True)
class Hyperparameters:
    """The resolved numbers a job trains with: what the API reports and what ``TrainConfig`` carries."""

    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float
    beta: float | None = None
    """DPO only."""
    rpo_alpha: float | None = None
    """DPO only (an extension of OpenAI's hyperparameters): the anchor's weight; ``None`` on jobs
    stored before it existed, which trained without one."""
    eval_interval: int | None = None
    """Reinforcement only, like the three below: the validation reward every this many steps."""
    eval_samples: int | None = None
    compute_multiplier: float | None = None
    reasoning_effort: str | None = None

    @classmethod
    def resolve(
        cls, requested: Mapping[str, Any] | None, n_examples: int, method: MethodType = MethodType.SUPERVISED
    ) -> Hyperparameters:
        """Turn ``"auto"`` (or missing) values into the numbers that will be used."""
        req = requested or {}

        def pick(key: str, auto: Any) -> Any:
            value = req.get(key)
            return auto if value in (None, "auto") else value

        dpo, rft = method == MethodType.DPO, method == MethodType.REINFORCEMENT
        n_epochs = int(pick("n_epochs", auto_epochs(n_examples)))
        batch_size = int(
            pick("batch_size", max(1, min(RFT_BATCH_SIZE, n_examples)) if rft else auto_batch_size(n_examples))
        )
        rate = RFT_LEARNING_RATE_MULTIPLIER if rft else DPO_LEARNING_RATE_MULTIPLIER if dpo else 1.0
        resolved = cls(
            n_epochs=n_epochs,
            batch_size=batch_size,
            learning_rate_multiplier=float(pick("learning_rate_multiplier", rate)),
            beta=float(pick("beta", DPO_BETA)) if dpo else None,
            rpo_alpha=float(pick("rpo_alpha", DPO_RPO_ALPHA)) if dpo else None,
        )
        if not rft:
            return resolved
        steps = -(-max(1, n_examples) // batch_size) * n_epochs
        effort = req.get("reasoning_effort")
        return replace(
            resolved,
            eval_interval=int(pick("eval_interval", max(1, steps // RFT_EVALUATIONS))),
            eval_samples=int(pick("eval_samples", RFT_EVAL_SAMPLES)),
            compute_multiplier=float(pick("compute_multiplier", 1.0)),
            reasoning_effort="medium" if effort in (None, "auto", "default") else str(effort),
        )

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any]) -> Hyperparameters:
        """The one conversion from stored JSON (a job's row, ``job.json``)."""
        return cls(
            n_epochs=int(stored["n_epochs"]),
            batch_size=int(stored["batch_size"]),
            learning_rate_multiplier=float(stored["learning_rate_multiplier"]),
            beta=float(stored["beta"]) if stored.get("beta") is not None else None,
            rpo_alpha=float(stored["rpo_alpha"]) if stored.get("rpo_alpha") is not None else None,
            eval_interval=_maybe(int, stored.get("eval_interval")),
            eval_samples=_maybe(int, stored.get("eval_samples")),
            compute_multiplier=_maybe(float, stored.get("compute_multiplier")),
            reasoning_effort=stored.get("reasoning_effort"),
        )

    def to_dict(self) -> dict[str, Any]:
        """Every value that applies (``method.<type>.hyperparameters`` on the wire, and storage)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def common(self) -> dict[str, Any]:
        """The deprecated top-level ``hyperparameters`` shape, which has no method-specific values."""
        return {k: v for k, v in self.to_dict().items() if k not in METHOD_SPECIFIC}

    @property
    def learning_rate(self) -> float:
        return BASE_LEARNING_RATE * self.learning_rate_multiplier


def _maybe(kind: Any, value: Any) -> Any:
    return None if value is None else kind(value)


def format_mismatch(filename: str, fmt: str, method: MethodType) -> str | None:
    """Why a file of format ``fmt`` cannot train a ``method`` job, or None when it can. The first line
    decides a file's format (as validation does), so the message points there. Shared by the worker,
    which fails the job before it starts, and the recipe, which may be handed a job.json by hand."""
    if (method == MethodType.REINFORCEMENT) != (fmt == "prompts"):
        if fmt == "prompts":
            return (
                f"{filename}:1: the file holds prompts without answers (each line's last message is the user's), which "
                f"train reinforcement jobs; this is a {method} job. Create it with method "
                "{'type': 'reinforcement', 'reinforcement': {'grader': ...}}, or add the answers."
            )
        return (
            f"{filename}:1: the file holds {fmt} examples, but this is a reinforcement job, which samples its "
            'own answers: each line is {"messages": [...]} ending with the user\'s message, plus any keys the grader '
            "reads as {{item.key}}."
        )
    if method == MethodType.DPO and fmt != "preference":
        return (
            f"{filename}:1: the file holds {fmt} examples, but this is a DPO job, which trains on preference pairs: "
            '{"input": {"messages": [...]}, "preferred_output": [assistant message], "non_preferred_output": '
            "[assistant message]} (build them with `selftune prepare --chosen COL --rejected COL`), or create "
            "a supervised job for this file."
        )
    if method != MethodType.DPO and fmt == "preference":
        return (
            f"{filename}:1: the file holds preference pairs (DPO format), but this is a supervised job; "
            "upload chat examples ({'messages': [...]}) instead, or create the job with method "
            "{'type': 'dpo'}."
        )
    return None
