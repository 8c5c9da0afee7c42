"""Models reached through any OpenAI-compatible chat completions API (selftune, OpenAI, vLLM, ...).

``api_answerer`` runs requests concurrently on a thread pool; ``batch_answerer`` sends them all as
one Batch (``/v1/batches``), which the server answers in the background. Either way answers come
back in prompt order, and greedy decoding (temperature 0) by default gives the same table again.
Plain-text prompts (from prompt/completion files) go to ``/v1/completions``, conversations to chat.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from selftune.errors import SelftuneError
from selftune.eval.core import Answerer, Prompt, Tick
from selftune.statuses import BATCHES, BatchStatus


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


def batch_answerer(
    client: Any,
    model: str,
    *,
    max_tokens: int | Sequence[int],
    temperature: float = 0.0,
    seed: int | None = 0,
    poll_s: float = 0.5,
) -> Answerer:
    """An ``Answerer`` that sends every prompt in one batch and waits for it. A request the server
    refused (a line of the batch's error file) raises with its message."""

    def answer(prompts: Sequence[Prompt], tick: Tick) -> list[str]:
        if not prompts:
            return []
        limits = [max_tokens] * len(prompts) if isinstance(max_tokens, int) else list(max_tokens)
        text = isinstance(prompts[0], str)
        endpoint = "/v1/completions" if text else "/v1/chat/completions"
        lines = []
        for i, prompt in enumerate(prompts):
            body: dict[str, Any] = {"model": model, "max_tokens": limits[i], "temperature": temperature}
            body.update({"prompt": prompt} if text else {"messages": prompt})
            if seed is not None:
                body["seed"] = seed
            lines.append(json.dumps({"custom_id": str(i), "method": "POST", "url": endpoint, "body": body}))
        requests = client.files.create(file=("eval-requests.jsonl", "\n".join(lines).encode()), purpose="batch")
        batch = client.batches.create(input_file_id=requests.id, endpoint=endpoint, completion_window="24h")
        seen = 0
        while batch.status not in BATCHES.terminal:
            time.sleep(poll_s)
            batch = client.batches.retrieve(batch.id)
            done = batch.request_counts.completed + batch.request_counts.failed if batch.request_counts else 0
            for _ in range(done - seen):
                tick()
            seen = max(seen, done)
        if batch.status != BatchStatus.COMPLETED:
            why = "; ".join(e.message for e in (batch.errors.data if batch.errors else [])) or batch.status
            raise SelftuneError(f"batch {batch.id} for {model} ended {batch.status}: {why}")
        if batch.error_file_id:
            first = json.loads(client.files.content(batch.error_file_id).text.splitlines()[0])
            error = first["response"]["body"].get("error", {})
            raise SelftuneError(f"{model} refused request {first['custom_id']}: {error.get('message', error)}")
        answers = [""] * len(prompts)
        for raw in client.files.content(batch.output_file_id).text.splitlines():
            row = json.loads(raw)
            body = row["response"]["body"]
            choice = body["choices"][0] if body.get("choices") else {}
            got = choice.get("text") if text else (choice.get("message") or {}).get("content")
            answers[int(row["custom_id"])] = str(got or "").strip() if text else str(got or "")
        for _ in range(len(prompts) - seen):
            tick()
        return answers

    return answer
