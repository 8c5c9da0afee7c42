"""Answer-vs-reference metrics, each a pure function on two strings, plus the statistics around them.

Normalisation follows SQuAD's evaluation script (lower case, no punctuation, no articles ``a``,
``an``, ``the``, whitespace collapsed), so "The Knee cap." and "knee cap" are the same answer.
ROUGE-L is the LCS F-measure over those normalised tokens, computed by ``rouge-score``, the library
the ``text_similarity`` grader uses (one implementation: only the tokens differ, SQuAD's here, so
accented words stay whole); token F1 is SQuAD's, which no OpenAI grader has.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Sequence
from functools import cache
from typing import Any

import numpy as np

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}‘’“”–—…]")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_FENCE = re.compile(r"^```[a-zA-Z0-9_-]*\s*\n(.*?)\n?```$", re.DOTALL)
OTHER_LABEL = "(other)"


def normalize(text: str) -> str:
    text = _PUNCT.sub(" ", text.lower())
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize(prediction) == normalize(reference))


def contains(prediction: str, reference: str) -> float:
    """Whether the whole normalised reference occurs in the prediction, on word boundaries."""
    ref = normalize(reference)
    return float(bool(ref) and f" {ref} " in f" {normalize(prediction)} ")


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalize(prediction).split(), normalize(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


class _Words:
    """``rouge-score``'s tokenizer interface over words of text ``rouge_l`` has already normalised
    (rouge-score's own tokenizer would split accented words)."""

    def tokenize(self, text: str) -> list[str]:
        return text.split()


@cache
def _rouge_l() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=_Words())


def rouge_l(prediction: str, reference: str) -> float:
    pred, ref = normalize(prediction), normalize(reference)
    if not pred or not ref:  # rouge-score gives 0 for two empty answers; an empty reference matched is a match
        return float(pred == ref)
    return float(_rouge_l().score(ref, pred)["rougeL"].fmeasure)


def parse_json(text: str) -> object | None:
    """The JSON value in ``text`` (a surrounding Markdown code fence is allowed), or None."""
    text = text.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        return json.loads(text)  # type: ignore[no-any-return]
    except ValueError:
        return None


def is_json_reference(reference: str) -> bool:
    """References that are JSON objects or arrays make "valid JSON" a metric worth reporting."""
    return isinstance(parse_json(reference), (dict, list))


def json_valid(prediction: str) -> float:
    return float(parse_json(prediction) is not None)


def label_set(references: Sequence[str], *, max_labels: int = 20, max_words: int = 4) -> list[str] | None:
    """The closed set of answers, when the references look like one: few short values, each repeated."""
    labels = Counter(normalize(r) for r in references)
    if len(labels) < 2 or len(labels) > max_labels or "" in labels:
        return None
    if len(labels) * 2 > len(references) or any(len(label.split()) > max_words for label in labels):
        return None
    return sorted(labels)


def predict_label(prediction: str, labels: Sequence[str]) -> str:
    """The label a free-text answer names: itself, else the only label it contains, else ``(other)``."""
    pred = normalize(prediction)
    if pred in labels:
        return pred
    found = [label for label in labels if f" {label} " in f" {pred} "]
    return found[0] if len(found) == 1 else OTHER_LABEL


def confusion(gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> list[list[int]]:
    """Rows are the true labels, columns the predicted ones (``labels`` then ``(other)``)."""
    columns = [*labels, OTHER_LABEL]
    matrix = [[0] * len(columns) for _ in labels]
    for g, p in zip(gold, predicted, strict=True):
        matrix[labels.index(g)][columns.index(p)] += 1
    return matrix


def bootstrap_ci(values: Sequence[float], *, resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """A 95% percentile-bootstrap interval for the mean; (mean, mean) for fewer than two values."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        m = float(x.mean()) if len(x) else float("nan")
        return m, m
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)
