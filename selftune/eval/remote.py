"""Models reached through any OpenAI-compatible chat completions API (selftune, OpenAI, vLLM, ...).

Requests run concurrently on a thread pool; answers come back in prompt order. Greedy decoding
(temperature 0) by default, so a rerun gives the same table.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from selftune.eval.core import Answerer, Prompt, Tick


def api_answerer(
    client: Any,
    model: str,
    *,
    max_tokens: int | Sequence[int],
    concurrency: int = 4,
    temperature: float = 0.0,
    seed: int | None = 0,
) -> Answerer:
    """An ``Answerer`` for ``model`` through ``client`` (an ``openai.OpenAI``)."""

    def answer(prompts: Sequence[Prompt], tick: Tick) -> list[str]:
        limits = [max_tokens] * len(prompts) if isinstance(max_tokens, int) else list(max_tokens)

        def one(i: int) -> str:
            extra: dict[str, Any] = {"seed": seed} if seed is not None else {}
            extra.update(model=model, max_tokens=limits[i], temperature=temperature)
            prompt = prompts[i]
            if isinstance(prompt, str):  # a prompt-style fine-tune answers through legacy Completions
                c = client.completions.create(prompt=prompt, **extra)
                tick()
                return str(c.choices[0].text).strip() if c.choices else ""
            r = client.chat.completions.create(messages=prompt, **extra)
            tick()
            return str(r.choices[0].message.content or "") if r.choices else ""

        with ThreadPoolExecutor(max(1, concurrency)) as pool:
            return list(pool.map(one, range(len(prompts))))

    return answer
