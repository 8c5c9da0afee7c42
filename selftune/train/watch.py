"""Overfitting, made visible: the full validation loss at each checkpoint, watched by the recipe.

With a validation file, every epoch's checkpoint gets a full validation pass (``full_valid_loss``).
``ValidationWatch`` keeps those numbers and

- names the **best checkpoint** (the lowest full validation loss), which is never pruned, so the
  user can call it (``ft:...:ckpt-step-N``) when the final model is worse;
- warns once when the loss has **risen ``OVERFIT_PATIENCE`` evaluations in a row**: the model is
  learning the training examples rather than the task (seen on a 3-epoch job: 0.288 after the
  first epoch, 0.551 after the third, which was the model served).

Its state travels in the recipe's resumable state, so a resumed run warns at the same step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from selftune.train.protocol import Message, TrainConfig

OVERFIT_PATIENCE = 2


def checkpoint_name(cfg: TrainConfig, step: int) -> str:
    """A checkpoint's model name, as the job will register it."""
    return f"{cfg.model_name}:ckpt-step-{step}"


@dataclass
class ValidationWatch:
    history: list[tuple[int, float]] = field(default_factory=list)
    """(step, full validation loss) at each checkpoint, in order."""
    warned: bool = False

    @property
    def best_step(self) -> int | None:
        return min(self.history, key=lambda h: h[1])[0] if self.history else None

    def add(self, step: int, loss: float, cfg: TrainConfig) -> Message | None:
        """Record a checkpoint's full validation loss; the overfitting warning, the first time it applies."""
        self.history.append((step, loss))
        recent = self.history[-(OVERFIT_PATIENCE + 1) :]
        rising = len(recent) > OVERFIT_PATIENCE and all(b[1] > a[1] for a, b in pairwise(recent))
        if not rising or self.warned:
            return None
        self.warned = True
        best = self.best_step
        assert best is not None
        trail = ", ".join(f"{v:.3f} at step {s}" for s, v in recent)
        return Message(
            f"Validation loss has risen for {OVERFIT_PATIENCE} evaluations in a row ({trail}): the model is "
            "learning the training examples rather than the task. The best checkpoint so far is "
            f"{checkpoint_name(cfg, best)} (full validation loss {dict(self.history)[best]:.3f}); it is kept. "
            "Fewer epochs or more data would help.",
            level="warn",
            extra={"overfitting": True, "best_step": best},
        )

    def best_checkpoint(self, cfg: TrainConfig) -> str | None:
        """The best checkpoint's name (None without a validation file)."""
        best = self.best_step
        return checkpoint_name(cfg, best) if best is not None else None

    def prune(self, checkpoints: list[str], keep: int, path_of: Callable[[int], Any], best: int = 1) -> list[str]:
        """The checkpoint folders to delete: all but the newest ``keep`` and the ``best`` best."""
        ranked = [str(path_of(s)) for s, _ in sorted(self.history, key=lambda h: h[1])[:best]]
        protected = set(checkpoints[-max(1, keep) :]) | set(ranked)
        return [c for c in checkpoints if c not in protected]

    def to_state(self) -> dict[str, Any]:
        return {"history": self.history, "warned": self.warned}

    @classmethod
    def from_state(cls, saved: dict[str, Any] | None) -> ValidationWatch:
        if not saved:
            return cls()
        return cls([(int(s), float(v)) for s, v in saved["history"]], bool(saved["warned"]))
