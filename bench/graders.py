"""What a grader costs per sample, for each type: through ``client.fine_tuning.alpha.graders.run``.

    python -m bench.graders [--work DIR]     (also part of ``make bench``)

One request at a time to a server as ``make serve`` runs it (SmolLM2 as the judge, named through
the ``gpt-4o-mini`` alias); the median of ``ROUNDS`` requests per grader (of ``JUDGE_ROUNDS`` for the
judges), the HTTP round trip included, and the grader's own ``execution_time`` beside it. The first
request of each grader is not counted (a ``cosine`` grader loads MiniLM then).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

ROUNDS = 20
JUDGE_ROUNDS = 5
ITEM = {"answer": "The capital of France is Paris."}
SAMPLE = "Paris is the capital of France."
TEXT = {"input": "{{sample.output_text}}", "reference": "{{item.answer}}"}
PROMPT = [
    {
        "role": "user",
        "content": "Reference: {{item.answer}}\nAnswer: {{sample.output_text}}\nScore the answer from 0 to 1.",
    }
]
GRADERS: list[tuple[str, dict[str, Any], int]] = [
    ("string_check", {"type": "string_check", "name": "s", "operation": "ilike", **TEXT}, ROUNDS),
    *(
        (f"text_similarity {m}", {"type": "text_similarity", "name": "t", "evaluation_metric": m, **TEXT}, ROUNDS)
        for m in ("fuzzy_match", "bleu", "gleu", "meteor", "rouge_1", "rouge_l", "cosine")
    ),
    (
        "python",
        {
            "type": "python",
            "name": "p",
            "source": "def grade(sample, item):\n    return float(item['answer'] in sample['output_text'])\n",
        },
        ROUNDS // 2,
    ),
    (
        "score_model (SmolLM2 judge)",
        {"type": "score_model", "name": "j", "model": "gpt-4o-mini", "input": PROMPT},
        JUDGE_ROUNDS,
    ),
    (
        "label_model in a multi (SmolLM2 judge)",
        {
            "type": "multi",
            "name": "m",
            "calculate_output": "label",
            "graders": {
                "label": {
                    "type": "label_model",
                    "name": "label",
                    "model": "gpt-4o-mini",
                    "input": PROMPT,
                    "labels": ["correct", "wrong"],
                    "passing_labels": ["correct"],
                }
            },
        },
        JUDGE_ROUNDS,
    ),
]


def run(home: Path) -> dict[str, Any]:
    from selftune.live import LiveServer

    server = LiveServer(home, {"SELFTUNE_EVAL_EXAMPLES": "0"}).start(timeout=900)
    out: dict[str, Any] = {}
    try:
        client = server.client(timeout=600)
        for name, grader, rounds in GRADERS:
            client.fine_tuning.alpha.graders.run(grader=grader, model_sample=SAMPLE, item=ITEM)  # type: ignore[arg-type]
            seconds, executed, tokens = [], [], None
            for _ in range(rounds):
                t = time.perf_counter()
                r = client.fine_tuning.alpha.graders.run(grader=grader, model_sample=SAMPLE, item=ITEM)  # type: ignore[arg-type]
                seconds.append(time.perf_counter() - t)
                executed.append(r.metadata.execution_time)
                tokens = r.metadata.token_usage
            errors = [k for k, v in r.metadata.errors.model_dump().items() if v]
            out[name] = {
                "ms": 1000 * statistics.median(seconds),
                "execution_ms": 1000 * statistics.median(executed),
                "tokens": tokens,
                "errors": errors,
            }
    finally:
        server.stop()
    return out


def rows(r: dict[str, Any]) -> list[str]:
    """The section's table, for ``BENCHMARKS.md``."""
    return [
        "Each grader type through `client.fine_tuning.alpha.graders.run`, one request at a time, median of "
        f"{ROUNDS} requests ({JUDGE_ROUNDS} for the judges), the HTTP round trip included "
        "(`python -m bench.graders`).",
        "",
        "| grader | per sample | grading (`execution_time`) | judge tokens |",
        "|---|---|---|---|",
        *(
            f"| {name} | {v['ms']:.1f} ms | {v['execution_ms']:.1f} ms | {v['tokens'] or ''} |"
            + (f" errors: {', '.join(v['errors'])}" if v["errors"] else "")
            for name, v in r.items()
        ),
    ]


def main() -> None:
    from bench.measure import REPO

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--work", type=Path, default=REPO / ".bench" / "graders")
    args = p.parse_args()
    r = run(args.work / "home")
    print(json.dumps(r, indent=2))
    print("\n".join(rows(r)))


if __name__ == "__main__":
    main()
