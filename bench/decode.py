"""Decode speed of the engine at long answers: tokens/s over each 128-token window of one answer.

    python -m bench.decode [--tokens 512] [--model SmolLM2-135M-Instruct]

It drives ``selftune.inference.engine.Engine`` directly (no HTTP), sampling with a fixed seed and
retrying with the next seed until an answer runs the full length, so every window is measured on
the same answer. A detokenizer whose cost grows with the answer shows as later windows slowing down.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from selftune.catalog import Catalog
from selftune.config import LOCAL_OWNER, Settings
from selftune.inference.engine import Engine, Event, Generation, SamplingParams
from selftune.store import Store

PROMPT = [{"role": "user", "content": "Write a very long story about a lighthouse keeper and the sea."}]
WINDOW = 128


def run(model: str, tokens: int, home: Path | None) -> list[float]:
    settings = Settings(home=home) if home else Settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    catalog = Catalog(settings, Store(settings.db_url))
    engine = Engine(catalog, max_batch=1)
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


if __name__ == "__main__":
    main()
