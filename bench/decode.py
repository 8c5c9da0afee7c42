"""Decode speed of the engine at long answers, and what constrained decoding adds per token.

    python -m bench.decode [--tokens 512] [--model SmolLM2-135M-Instruct]

It drives ``selftune.inference.torch_engine.TorchEngine`` directly (no HTTP), sampling with a fixed seed and
retrying with the next seed until an answer runs the full length, so every window is measured on
the same answer. A detokenizer whose cost grows with the answer shows as later windows slowing down.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from selftune.catalog import Catalog
from selftune.config import LOCAL_OWNER, Settings
from selftune.inference.generation import Event, Generation, SamplingParams
from selftune.inference.torch_engine import TorchEngine
from selftune.store import Store

PROMPT = [{"role": "user", "content": "Write a very long story about a lighthouse keeper and the sea."}]
WINDOW = 128


def run(model: str, tokens: int, home: Path | None) -> list[float]:
    settings = Settings(home=home) if home else Settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    catalog = Catalog(settings, Store(settings.db_url))
    engine = TorchEngine(catalog, max_batch=1)
    resolved = catalog.resolve(model, LOCAL_OWNER)
    engine.preload(resolved.base).result()
    try:
        for seed in range(20):
            stamps: list[float] = []
            finish: list[str | None] = [None]

            def emit(e: Event, stamps: list[float] = stamps, finish: list[str | None] = finish) -> None:
                stamps.append(time.perf_counter())
                if e.finish_reason:
                    finish[0] = e.finish_reason

            gen = Generation(resolved, PROMPT, SamplingParams(max_tokens=tokens, temperature=1.0, seed=seed), emit)
            engine.submit(gen).result()
            if finish[0] == "length" and len(stamps) >= tokens * 0.9:
                rates = []
                for start in range(0, tokens - WINDOW + 1, WINDOW):
                    a, b = stamps[start], stamps[min(len(stamps) - 1, start + WINDOW)]
                    rates.append(WINDOW / (b - a))
                return rates
        raise SystemExit(f"no answer ran {tokens} tokens in 20 seeds")
    finally:
        engine.close()


def constraint_cost(model: str, home: Path | None) -> tuple[float, float, float]:
    """Microseconds per token that constrained decoding adds (the mask from llguidance, applied to
    the logits, then the token consumed), over a long JSON answer written token by token; the extra
    seconds of a grammar's first use; and the one-off seconds of preparing the model's vocabulary."""
    import json

    import torch

    from selftune.data.render import stop_token_ids
    from selftune.inference.constrain import RowConstraint, Vocabulary, schema_grammar

    settings = Settings(home=home) if home else Settings()
    catalog = Catalog(settings, Store(settings.db_url))
    tokenizer = catalog.tokenizer(catalog.resolve(model, LOCAL_OWNER).base)
    t0 = time.perf_counter()
    vocab = Vocabulary.build(tokenizer, stop_token_ids(tokenizer), len(tokenizer))
    setup = time.perf_counter() - t0
    schema = {
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "count": {"type": "integer"}},
                    "required": ["name", "count"],
                },
            }
        },
        "required": ["items"],
    }
    answer = json.dumps({"items": [{"name": f"lighthouse keeper {i}", "count": i} for i in range(60)]})
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    runs = []
    for _ in range(2):  # the first run also builds the grammar's lexer states, lazily; the second is steady
        row = RowConstraint(vocab, schema_grammar(schema), reserve=0)
        logits = torch.randn(vocab.size)
        t0 = time.perf_counter()
        for token in ids:
            masked, _ = row.mask(logits, remaining=10_000)
            assert masked[token] > float("-inf"), "the schema refused its own answer"
            row.advance(token)
        runs.append(time.perf_counter() - t0)
    return runs[1] / len(ids) * 1e6, runs[0] - runs[1], setup


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--model", default="SmolLM2-135M-Instruct")
    p.add_argument("--home", type=Path, default=None, help="SELFTUNE_HOME [default: as selftune serve]")
    args = p.parse_args()
    rates = run(args.model, args.tokens, args.home)
    windows = ", ".join(f"{i * WINDOW}-{(i + 1) * WINDOW}: {r:.1f}" for i, r in enumerate(rates))
    print(f"{args.model}, {args.tokens} new tokens, tokens/s per window: {windows}")
    print(f"last window / first window: {rates[-1] / rates[0]:.2f}")
    per_token, first_use, setup = constraint_cost(args.model, args.home)
    step_us = 1e6 / rates[0]
    print(
        f"constrained decoding (JSON schema, llguidance): {per_token:.0f} us per token "
        f"({100 * per_token / step_us:.2f}% of a decode step here), plus {first_use:.2f} s on a grammar's first "
        f"use; the model's vocabulary is prepared once, in {setup:.2f} s"
    )


if __name__ == "__main__":
    main()
