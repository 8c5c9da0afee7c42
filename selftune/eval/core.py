"""Evaluation's parts: held-out examples, answers scored against their references, the report.

``selftune.eval.evaluate`` puts them together. Models are plain functions from prompts to answers
(``Answerer``), so the scoring never knows where the answers came from.

An example is a training-format line: the conversation up to its last assistant message is the
prompt, and that message is the reference answer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from selftune.data.validate import content_text, validate_file
from selftune.errors import InvalidFile
from selftune.eval import metrics as m
from selftune.eval.embed import Embedder

Messages = list[dict[str, Any]]
Prompt = Messages | str
"""What a model is asked: chat messages, or (from ``prompt``/``completion`` lines) plain text."""
Tick = Callable[[], None]
Answerer = Callable[[Sequence[Prompt], Tick], list[str]]
"""Answers each prompt in order; calls the tick once per finished answer (for progress bars)."""

RATE = "rate"
SCORE = "score"
METRICS: dict[str, tuple[str, str]] = {
    "exact_match": ("exact match", RATE),
    "contains": ("contains answer", RATE),
    "token_f1": ("token F1", SCORE),
    "rouge_l": ("ROUGE-L", SCORE),
    "embedding": ("embedding similarity", SCORE),
    "json_valid": ("valid JSON", RATE),
    "label_accuracy": ("label accuracy", RATE),
    "prefers": ("leans to preferred", RATE),
    "preference_margin": ("preferred minus non-preferred similarity", SCORE),
}
"""Every metric: its display name and whether it is a rate (shown as %) or a 0-1 score."""


@dataclass
class Example:
    line: int
    prompt: Prompt
    reference: str
    rejected: str | None = None
    """A preference line's non-preferred output (its preferred one is the reference)."""


def as_messages(prompt: Prompt) -> Messages:
    """A prompt as turns to show or quote (plain text reads as one user turn)."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


@dataclass
class Stat:
    mean: float
    low: float
    high: float
    n: int


@dataclass
class EvalReport:
    data: str
    models: list[str]
    examples: list[Example]
    outputs: dict[str, list[str]]
    scores: dict[str, dict[str, list[float]]]
    """model -> metric -> one value per example."""
    stats: dict[str, dict[str, Stat]]
    kind: str
    """``labels``, ``json``, ``short`` or ``long``: what the references look like."""
    primary: str
    """The metric that decides "right" for flips and leads the summary."""
    labels: list[str] | None = None
    predicted_labels: dict[str, list[str]] = field(default_factory=dict)
    confusion: dict[str, list[list[int]]] = field(default_factory=dict)
    judge: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    created_at: int = field(default_factory=lambda: int(time.time()))
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def baseline(self) -> str:
        return self.models[0]

    @property
    def metric_keys(self) -> list[str]:
        return [k for k in METRICS if k in self.scores[self.baseline]]

    def right(self, model: str, i: int) -> bool:
        return self.scores[model][self.primary][i] >= 0.5

    def flips(self, model: str) -> dict[str, list[int]]:
        """Examples the baseline got right and ``model`` wrong ("broken"), and the reverse ("fixed")."""
        base = self.baseline
        n = len(self.examples)
        return {
            "fixed": [i for i in range(n) if self.right(model, i) and not self.right(base, i)],
            "broken": [i for i in range(n) if self.right(base, i) and not self.right(model, i)],
        }

    def summary(self) -> str:
        """One line, e.g. ``Eval: exact match 12% → 78%, ROUGE-L 0.21 → 0.66 (n=40)``."""
        extra = ("exact_match", "rouge_l") if self.kind in ("short", "labels") else ("token_f1", "embedding")
        if self.primary == "prefers":
            extra = ("preference_margin", "embedding")
        keys = [self.primary] + [k for k in extra if k != self.primary and k in self.metric_keys]
        parts = [f"{METRICS[k][0]} " + " → ".join(fmt(k, self.stats[mod][k].mean) for mod in self.models) for k in keys]
        return f"Eval: {', '.join(parts)} (n={len(self.examples)})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "object": "selftune.eval_report",
            "created_at": self.created_at,
            "data": self.data,
            "n": len(self.examples),
            "models": self.models,
            "baseline": self.baseline,
            "kind": self.kind,
            "primary": self.primary,
            "summary": self.summary(),
            "metrics": {k: {"name": METRICS[k][0], "kind": METRICS[k][1]} for k in self.metric_keys},
            "stats": {mod: {k: asdict(s) for k, s in st.items()} for mod, st in self.stats.items()},
            "labels": self.labels,
            "confusion": self.confusion,
            "flips": {mod: self.flips(mod) for mod in self.models[1:]},
            "judge": self.judge,
            "seconds": self.seconds,
            "notes": self.notes,
            "examples": [
                {
                    "line": ex.line,
                    "prompt": ex.prompt,
                    "reference": ex.reference,
                    "outputs": {mod: self.outputs[mod][i] for mod in self.models},
                    "scores": {mod: {k: self.scores[mod][k][i] for k in self.metric_keys} for mod in self.models},
                    **(
                        {"labels": {mod: self.predicted_labels[mod][i] for mod in self.models}}
                        if self.predicted_labels
                        else {}
                    ),
                }
                for i, ex in enumerate(self.examples)
            ],
        }


def fmt(metric: str, value: float) -> str:
    if value != value:  # NaN: nothing to average
        return "n/a"
    return f"{value:.0%}" if METRICS.get(metric, ("", RATE))[1] == RATE else f"{value:.2f}"


# --- examples -----------------------------------------------------------------------------------------


def load_examples(path: str | Path, *, limit: int | None = None, filename: str | None = None) -> list[Example]:
    """Read held-out examples from a training-format file (chat or preference), validated first.

    Raises ``InvalidFile`` listing every problem as ``file:line`` when the file is not usable.
    """
    name = filename or str(path)
    report = validate_file(path, filename=name)
    if not report.ok:
        raise InvalidFile(report.summary(max_lines=20), [p.to_dict() for p in report.errors])
    examples: list[Example] = []
    with open(path, encoding="utf-8-sig") as f:
        for line_no, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            examples.append(example_from(json.loads(raw), line_no, name, report.format == "prompts"))
            if limit is not None and len(examples) >= limit:
                break
    return examples


def example_from(obj: dict[str, Any], line_no: int, name: str, prompts: bool = False) -> Example:
    """One validated training-format line as an example: chat (the conversation before its last
    assistant message, and that message), preference (the input, and the preferred output; the
    other is kept as ``rejected``), legacy prompt/completion (plain text), or a reinforcement
    job's prompt (``prompts``: all its messages, no reference)."""
    if "completion" in obj and "messages" not in obj:
        return Example(line_no, obj.get("prompt", ""), obj["completion"])
    rejected: str | None = None
    if prompts:  # a reinforcement job's prompt: the whole conversation, and no reference
        prompt, answer = obj["messages"], {"content": ""}
    elif "messages" in obj:
        messages = obj["messages"]
        last = max(i for i, msg in enumerate(messages) if msg.get("role") == "assistant")
        prompt, answer = messages[:last], messages[last]
    else:
        prompt, answer = obj["input"]["messages"], obj["preferred_output"][-1]
        rejected = content_text(obj["non_preferred_output"][-1].get("content"))
    prompt = [{"role": msg["role"], "content": content_text(msg.get("content"))} for msg in prompt]
    if not any(msg["role"] == "user" for msg in prompt):
        raise InvalidFile(
            f"{name}:{line_no}: the conversation before the last assistant message has no user "
            "message, so there is no question to ask; put the user's turn before the answer.",
            [{"line": line_no, "level": "error", "key": "missing_prompt", "message": "no user message"}],
        )
    return Example(line_no, prompt, content_text(answer.get("content")), rejected)


# --- scoring ------------------------------------------------------------------------------------------


def _kind(references: Sequence[str]) -> tuple[str, list[str] | None]:
    labels = m.label_set(references)
    if labels is not None:
        return "labels", labels
    if references and all(m.is_json_reference(r) for r in references):
        return "json", None
    words = sorted(len(r.split()) for r in references)
    return ("short" if words and words[len(words) // 2] <= 5 else "long"), None


def score(
    examples: Sequence[Example],
    outputs: Mapping[str, Sequence[str]],
    *,
    embedder: Embedder | None = None,
    data: str = "",
    notes: Sequence[str] = (),
    seed: int = 0,
) -> EvalReport:
    """Score every model's outputs against the references; the first model is the baseline."""
    refs = [ex.reference for ex in examples]
    kind, labels = _kind(refs)
    primary = {"labels": "label_accuracy", "json": "json_valid", "short": "contains", "long": "rouge_l"}[kind]
    pairs = bool(examples) and all(ex.rejected is not None for ex in examples)
    centroids = preference_centroids(embedder, examples) if pairs and embedder is not None else None
    if centroids is not None:
        primary = "prefers"
    elif pairs:
        notes = [*notes, "leans-to-preferred skipped: it needs the embedding model"]
    report = EvalReport(
        data=data,
        models=list(outputs),
        examples=list(examples),
        outputs={k: list(v) for k, v in outputs.items()},
        scores={},
        stats={},
        kind=kind,
        primary=primary,
        labels=labels,
        notes=list(notes),
    )
    for model, outs in report.outputs.items():
        per: dict[str, list[float]] = {
            name: [fn(o, r) for o, r in zip(outs, refs, strict=True)]
            for name, fn in (
                ("exact_match", m.exact_match),
                ("contains", m.contains),
                ("token_f1", m.token_f1),
                ("rouge_l", m.rouge_l),
            )
        }
        if embedder is not None:
            per["embedding"] = embedder.similarity(outs, refs)
            if centroids is not None:
                per["preference_margin"] = preference_margins(embedder, outs, examples, centroids)
                per["prefers"] = [float(v > 0) for v in per["preference_margin"]]
        if kind == "json":
            per["json_valid"] = [m.json_valid(o) for o in outs]
        if labels is not None:
            predicted = [m.predict_label(o, labels) for o in outs]
            gold = [m.normalize(r) for r in refs]
            per["label_accuracy"] = [float(p == g) for p, g in zip(predicted, gold, strict=True)]
            report.predicted_labels[model] = predicted
            report.confusion[model] = m.confusion(gold, predicted, labels)
        report.scores[model] = per
        report.stats[model] = {k: Stat(mean(v), *m.bootstrap_ci(v, seed=seed), n=len(v)) for k, v in per.items()}
    return report


def preference_centroids(embedder: Embedder, examples: Sequence[Example]) -> tuple[Any, Any]:
    """The normalised mean embeddings of the preferred and of the non-preferred outputs."""
    normalize = embedder.torch.nn.functional.normalize
    preferred = normalize(embedder.embed([ex.reference for ex in examples]).mean(0), dim=-1)
    others = normalize(embedder.embed([ex.rejected or "" for ex in examples]).mean(0), dim=-1)
    return preferred, others


def preference_margins(
    embedder: Embedder,
    outputs: Sequence[str],
    examples: Sequence[Example],
    centroids: tuple[Any, Any] | None = None,
) -> list[float]:
    """Per answer: its cosine similarity to the mean of the preferred outputs minus that to the mean
    of the non-preferred ones. Means over the whole set, because a preference is usually a style
    (tone, length, format) more than one right answer, and one pair is a noisy sample of it.
    ``centroids``: ``preference_centroids`` of ``examples``, when several models are scored."""
    preferred, others = centroids or preference_centroids(embedder, examples)
    answers = embedder.embed(outputs)
    return [float(v) for v in answers @ preferred - answers @ others]


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def default_max_tokens(reference: str) -> int:
    """Room for an answer about twice the reference's length (about 4 characters a token)."""
    return max(32, min(512, len(reference) // 2 + 32))
