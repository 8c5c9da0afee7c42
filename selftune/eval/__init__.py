"""Evaluation: does the fine-tuned model beat its base on held-out data? (``selftune eval``)."""

from selftune.eval.core import Answerer, EvalReport, Example, evaluate, load_examples, score

__all__ = ["Answerer", "EvalReport", "Example", "evaluate", "load_examples", "score"]
