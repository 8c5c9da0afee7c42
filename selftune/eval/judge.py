"""The pairwise judge: a model (any OpenAI-compatible one) picks the better answer of each pair of
the baseline's and another model's, the pair's order drawn at random per example, so a judge that
favours a position gains no side anything; the report says how often it picked answer A."""

from __future__ import annotations

import random
import re
from typing import Any

from selftune.eval import metrics as m
from selftune.eval.core import Answerer, EvalReport, Example, Messages, Tick, as_messages, mean

JUDGE_SYSTEM = "You are a careful, impartial judge of answers to questions. You reply with a single letter."
_VERDICT = re.compile(r"\b(A|B|TIE|Tie|tie|T)\b")


def judge_prompt(example: Example, first: str, second: str) -> Messages:
    question = "\n".join(f"{msg['role']}: {msg['content']}" for msg in as_messages(example.prompt))
    return [
        {"role": "system", "content": JUDGE_SYSTEM},
        {
            "role": "user",
            "content": f"Conversation:\n{question}\n\nReference answer:\n{example.reference}\n\n"
            f"Answer A:\n{first}\n\nAnswer B:\n{second}\n\n"
            "Which answer is better: closer to the reference in content, correct and appropriate in style? "
            "Reply with exactly one of: A, B, or T for a tie.",
        },
    ]


def parse_verdict(reply: str) -> str | None:
    """``A``, ``B``, ``T`` or None when the judge said none of them."""
    found = _VERDICT.search(reply.strip())
    if not found:
        return None
    return "T" if found.group(1).upper() in ("T", "TIE") else found.group(1)


def judge(report: EvalReport, answer: Answerer, name: str, tick: Tick, *, seed: int = 0) -> dict[str, Any]:
    """Pairwise verdicts of each model against the baseline, the order of each pair drawn at random
    (per example, from ``seed``), so a judge that prefers a position gains nobody anything."""
    base = report.baseline
    results: dict[str, Any] = {}
    for model in report.models[1:]:
        swaps = [random.Random(seed * 1_000_003 + i).random() < 0.5 for i in range(len(report.examples))]
        prompts = []
        for i, ex in enumerate(report.examples):
            ours, theirs = report.outputs[model][i], report.outputs[base][i]
            prompts.append(judge_prompt(ex, *((ours, theirs) if swaps[i] else (theirs, ours))))
        replies = answer(prompts, tick)
        wins = losses = ties = invalid = first = 0
        points: list[float] = []
        verdicts = []
        for swapped, reply in zip(swaps, replies, strict=True):
            v = parse_verdict(reply)
            outcome = None
            if v is None:
                invalid += 1
            elif v == "T":
                ties, outcome = ties + 1, "tie"
                points.append(0.5)
            else:
                first += v == "A"
                won = (v == "A") == swapped  # the model under test was A when swapped
                wins, losses = wins + won, losses + (not won)
                outcome = "win" if won else "loss"
                points.append(float(won))
            verdicts.append({"model_position": "A" if swapped else "B", "reply": reply[:200], "outcome": outcome})
        low, high = m.bootstrap_ci(points, seed=seed)
        decided = wins + losses
        results[model] = {
            "wins": wins,
            "losses": losses,
            "ties": ties,
            "invalid": invalid,
            "win_rate": mean(points),
            "low": low,
            "high": high,
            "first_position_rate": first / decided if decided else None,
            "verdicts": verdicts,
        }
    return {"model": name, "against": base, "results": results}
