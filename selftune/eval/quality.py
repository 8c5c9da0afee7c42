"""The quality guard: did a model come out of training worse than it went in?

A fine-tuned model can reach a low loss and still be broken: DPO with too high a learning rate
makes the preferred output's first words likely and everything after them unlikely ("Capital:
Capital: Capital: ..."), and many epochs on a small file make a model that repeats one answer to
every question. Loss curves do not show this; answers do. So the end of every job (``train.checks``)
has the base and the fine-tuned model answer the same held-out prompts, greedily, and this module
judges the answers, with nothing but their text and whether each ended its turn:

- **empty**: nothing but whitespace;
- **unended**: no end-of-turn within the limit (about 1.5x the reference's length, plus room);
- **repeats**: a long answer whose 12-character windows are mostly repeats of each other (a loop);
- **collapse**: different prompts, one answer: the most common answer covers half of them.

An answer with any of the first three flaws is *degenerate*. The verdict compares the two models on
the same prompts, because a small base model rambles too: the fine-tuned model is ``degenerated``
when it has clearly more degenerate answers than its base (``MIN_EXCESS``), or collapses where the
base did not. It is a report, never a reason to fail a job: the job succeeds, and the verdict goes
into its events, its ``quality`` field, ``jobs follow`` and the dashboard.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

Verdict = Literal["ok", "degenerated"]

REPEAT_NGRAM = 12
"""Characters, not words: a model in a loop may drop its spaces ("CapitalCapitalCapital...")."""
REPEAT_MIN_CHARS = 64
"""Shorter answers are never called loops: they have too few 12-grams to judge."""
REPEAT_SHARE = 0.6
"""An answer loops when at least this share of its 12-character windows repeat an earlier one.
Measured: among 8,672 texts of 64 characters or more (moodswapper's answers, Debian fortunes) the
highest share is 0.49; a loop of one word is above 0.9, a sentence said three times 0.65."""
COLLAPSE_SHARE = 0.5
COLLAPSE_MIN_PROMPTS = 4
MIN_EXCESS = 0.2
"""The share of prompts by which the fine-tuned model's degenerate answers must exceed the base's
(and at least two answers) for the verdict ``degenerated``: below that, it is sampling noise."""


@dataclass(frozen=True)
class Answer:
    text: str
    ended: bool
    """Whether the model ended its turn (an end-of-turn token) within the limit."""


def words(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text.lower())


def repeats(text: str) -> bool:
    """Whether a long answer is mostly a loop: most of its 12-character windows occurred earlier in it."""
    t = " ".join(text.lower().split())
    if len(t) < REPEAT_MIN_CHARS:
        return False
    grams = [t[i : i + REPEAT_NGRAM] for i in range(len(t) - REPEAT_NGRAM + 1)]
    return 1 - len(set(grams)) / len(grams) >= REPEAT_SHARE


def flaws(answer: Answer) -> list[str]:
    """What is wrong with one answer: ``empty``, ``unended``, ``repeats`` (none, for a good one)."""
    out = []
    if not answer.text.strip():
        out.append("empty")
    if not answer.ended:
        out.append("unended")
    if repeats(answer.text):
        out.append("repeats")
    return out


@dataclass(frozen=True)
class Profile:
    """One model's answers to the held-out prompts, counted."""

    answers: int
    ended: int
    empty: int
    repeats: int
    degenerate: int
    """Answers with at least one flaw."""
    most_common: int
    """How many prompts got the most common answer."""

    @property
    def collapsed(self) -> bool:
        return self.answers >= COLLAPSE_MIN_PROMPTS and self.most_common >= COLLAPSE_SHARE * self.answers

    def describe(self) -> str:
        parts = [f"{self.ended}/{self.answers} ended"]
        parts += [f"{n} {what}" for n, what in ((self.empty, "empty"), (self.repeats, "looping")) if n]
        if self.collapsed:
            parts.append(f"one answer to {self.most_common} prompts")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "collapsed": self.collapsed}


def profile(answers: Sequence[Answer]) -> Profile:
    found = [flaws(a) for a in answers]
    common = Counter(" ".join(words(a.text)) for a in answers).most_common(1)
    return Profile(
        answers=len(answers),
        ended=sum(a.ended for a in answers),
        empty=sum("empty" in f for f in found),
        repeats=sum("repeats" in f for f in found),
        degenerate=sum(bool(f) for f in found),
        most_common=common[0][1] if common else 0,
    )


@dataclass(frozen=True)
class Quality:
    """The guard's finding on one job: what the job's ``quality`` field holds."""

    verdict: Verdict
    message: str
    prompts: int
    source: str
    """Where the prompts came from: ``validation file`` or ``training file``."""
    base: Profile
    fine_tuned: Profile
    best_checkpoint: str | None = None
    """With a validation file: the checkpoint with the lowest full validation loss (it may be the
    final model's own)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "message": self.message,
            "prompts": self.prompts,
            "source": self.source,
            "base": self.base.to_dict(),
            "fine_tuned": self.fine_tuned.to_dict(),
            "best_checkpoint": self.best_checkpoint,
        }


def assess(
    base: Sequence[Answer], tuned: Sequence[Answer], source: str, best: str | None = None, *, suggest_best: bool = True
) -> Quality:
    """Compare the fine-tuned model's answers with the base's on the same prompts (same order).
    ``best``: the checkpoint with the lowest validation loss; a warning recommends it when
    ``suggest_best`` (it is not the final model itself)."""
    b, t = profile(base), profile(tuned)
    n = max(1, t.answers)
    excess = t.degenerate - b.degenerate
    worse = excess >= max(2, MIN_EXCESS * n) or (t.collapsed and not b.collapsed)
    head = f"Quality check on {t.answers} held-out prompt(s) from the {source}"
    if worse:
        message = (
            f"{head}: the fine-tuned model came out worse than its base ({t.describe()}; base: {b.describe()}). "
            "It may ramble, loop or give one answer to everything. Lower the learning rate or the epochs "
            "(on DPO jobs, keep the rpo_alpha anchor on)"
            + (f", or use the best checkpoint by validation loss, {best}" if best and suggest_best else "")
            + "; docs/training.md#when-a-model-comes-out-worse says how."
        )
    else:
        message = f"{head}: no degeneration (fine-tuned: {t.describe()}; base: {b.describe()})"
    return Quality("degenerated" if worse else "ok", message, t.answers, source, b, t, best)
