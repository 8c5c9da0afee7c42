"""Inference helpers of ``make bench``: a streamed request through the server, concurrent clients, and
a plain transformers ``generate`` loop (llama.cpp alone is in ``bench.serving``)."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import openai


def stream_once(client: openai.OpenAI, model: str, prompt: str, max_tokens: int) -> dict[str, float]:
    t0 = time.perf_counter()
    first = last = None
    tokens = 0
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        now = time.perf_counter()
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or now
            last = now
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    assert first is not None and last is not None
    return {"ttft": first - t0, "decode_seconds": last - first, "tokens": tokens, "total": last - t0}


def summarize(runs: list[dict[str, float]]) -> dict[str, float]:
    decode_tokens = sum(r["tokens"] - 1 for r in runs)
    return {
        "ttft_ms": 1000 * statistics.median(r["ttft"] for r in runs),
        "decode_tokens_per_second": decode_tokens / sum(r["decode_seconds"] for r in runs),
        "tokens": sum(r["tokens"] for r in runs),
    }


def concurrent(fn: Callable[[int], dict[str, float]], n: int) -> dict[str, float]:
    results: list[dict[str, float]] = [{}] * n
    t0 = time.perf_counter()
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, fn(i))) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {
        "clients": n,
        "tokens": sum(r["tokens"] for r in results),
        "seconds": wall,
        "tokens_per_second": sum(r["tokens"] for r in results) / wall,
    }


def transformers_loop(base_dir: Path, prompts: list[str], max_tokens: int) -> dict[str, float]:
    """The same prompts through plain ``model.generate`` (fp32, as the server serves on CPU)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    runs = []
    for p in prompts:
        ids = tok.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.no_grad():
            t0 = time.perf_counter()
            model.generate(**ids, max_new_tokens=1, do_sample=False)
            ttft = time.perf_counter() - t0
            t0 = time.perf_counter()
            out = model.generate(**ids, max_new_tokens=max_tokens, do_sample=False, min_new_tokens=max_tokens)
            total = time.perf_counter() - t0
        n = out.shape[1] - ids["input_ids"].shape[1]
        runs.append({"ttft": ttft, "decode_seconds": max(1e-9, total - ttft), "tokens": n, "total": total})
    return summarize(runs)
