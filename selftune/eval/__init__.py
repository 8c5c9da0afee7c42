"""Evaluation: does the fine-tuned model beat its base on held-out data? (``selftune eval``).

``evaluate`` is the one evaluation function: ``selftune eval`` (models reached through any
OpenAI-compatible API), the end of every job with a validation file (base and fine-tuned model in
the trainer's own process) and the dashboard (which shows the report the job attached) all use it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from selftune.eval.core import Answerer, EvalReport, Example, Tick, load_examples, score
from selftune.eval.embed import load_embedder
from selftune.eval.judge import judge

__all__ = ["Answerer", "EvalReport", "Example", "evaluate", "load_examples", "score"]


def evaluate(
    examples: Sequence[Example],
    answerers: Mapping[str, Answerer],
    *,
    judge_with: tuple[str, Answerer] | None = None,
    embeddings: bool = True,
    data: str = "",
    seed: int = 0,
    tick: Tick = lambda: None,
) -> EvalReport:
    """Ask every model every prompt, score the answers, and (optionally) have a judge compare them.

    The first answerer is the baseline that flips and judge verdicts are measured against.
    """
    if len(answerers) < 1:
        raise ValueError("evaluate needs at least one model")
    prompts = [ex.prompt for ex in examples]
    outputs: dict[str, list[str]] = {}
    seconds: dict[str, float] = {}
    for name, answer in answerers.items():
        t0 = time.perf_counter()
        outputs[name] = answer(prompts, tick)
        seconds[name] = round(time.perf_counter() - t0, 2)
    embedder, why_not = load_embedder() if embeddings else (None, None)
    report = score(examples, outputs, embedder=embedder, data=data, notes=[why_not] if why_not else [], seed=seed)
    report.seconds = seconds
    if judge_with is not None and len(report.models) > 1:
        report.judge = judge(report, judge_with[1], judge_with[0], tick, seed=seed)
    return report
