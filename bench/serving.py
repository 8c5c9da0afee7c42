"""Serving measurements of ``make bench``: llama.cpp alone against our server on both engines, one
client and eight (on one adapter and on mixed adapters), and chat latency while a job trains.

llama.cpp alone is ``xllamacpp`` in this process on the same GGUF, with its own chat template and
its default sampling at temperature 0: what a user would run instead of selftune.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai

from bench.inference import concurrent, stream_once, summarize
from selftune.live import LiveServer
from selftune.statuses import JOBS


def llamacpp_alone(gguf: Path, prompts: list[str], max_tokens: int, threads: int) -> dict[str, Any]:
    """Decode speed and time to first token of llama.cpp by itself: 1 client, then 8 at once."""
    import xllamacpp

    p = xllamacpp.CommonParams()
    p.model.path = str(gguf)
    p.n_parallel = 8
    p.n_ctx = 8192
    p.kv_unified = True
    p.cpuparams.n_threads = p.cpuparams_batch.n_threads = threads
    p.warmup = False
    p.verbosity = -1
    held = {"server": xllamacpp.Server(p)}

    def once(prompt: str) -> dict[str, float]:
        t0 = time.perf_counter()
        marks: list[float] = []

        def on_chunk(chunk: dict[str, Any]) -> bool:
            for c in chunk.get("choices", []):
                if c.get("delta", {}).get("content"):
                    marks.append(time.perf_counter())
            return False

        request = {
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
        }
        held["server"].handle_chat_completions(request, on_chunk)
        assert marks, "llama.cpp produced no text"
        return {
            "ttft": marks[0] - t0,
            "decode_seconds": marks[-1] - marks[0],
            "tokens": len(marks),
            "total": marks[-1] - t0,
        }

    once(prompts[0])  # warm-up
    single = summarize([once(q) for q in prompts])
    eight = concurrent(lambda i: once(prompts[i % len(prompts)]), 8)
    held.clear()  # stops llama.cpp's loop before the server is measured
    return {"single": single, "eight": eight}


def through_server(client: openai.OpenAI, models: list[str], prompts: list[str], max_tokens: int) -> dict[str, Any]:
    """1 client on the base model and on the first fine-tuned one; 8 clients on one adapter and on mixed ones."""
    for m in models:
        stream_once(client, m, prompts[0], 4)  # loads each adapter (a llama.cpp engine builds its server)
    ft = models[1] if len(models) > 1 else models[0]
    out: dict[str, Any] = {
        "base": summarize([stream_once(client, models[0], q, max_tokens) for q in prompts]),
        "ft": summarize([stream_once(client, ft, q, max_tokens) for q in prompts]),
    }

    def on(pick: Callable[[int], str]) -> Callable[[int], dict[str, float]]:
        return lambda i: stream_once(client, pick(i), prompts[i % len(prompts)], max_tokens)

    out["eight_base"] = concurrent(on(lambda i: models[0]), 8)
    out["eight_one_adapter"] = concurrent(on(lambda i: ft), 8)
    out["eight_mixed"] = concurrent(on(lambda i: models[i % len(models)]), 8)
    out["mixed_models"] = len(models)
    return out


def chat_latency(client: openai.OpenAI, model: str, prompt: str, seconds: float, clients: int = 8) -> dict[str, float]:
    """Median and 90th percentile latency of short answers (24 tokens) from ``clients`` looping clients."""
    latencies: list[float] = []
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def loop() -> None:
        while time.monotonic() < end:
            t0 = time.perf_counter()
            client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": prompt}], max_tokens=24, temperature=0
            )
            with lock:
                latencies.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=loop) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ordered = sorted(latencies)
    return {
        "median_s": statistics.median(ordered),
        "p90_s": ordered[int(0.9 * (len(ordered) - 1))],
        "requests": len(ordered),
    }


def latency_while_training(server: LiveServer, model: str, train: Path, prompt: str, seconds: float) -> dict[str, Any]:
    """Chat latency idle, then while a job trains on the same machine (the job is cancelled after)."""
    client = server.client(timeout=600)
    chat_latency(client, model, prompt, 3)  # warm-up
    idle = chat_latency(client, model, prompt, seconds)
    f = client.files.create(file=train.open("rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model=model, training_file=f.id, hyperparameters={"n_epochs": 3})
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:  # until the recipe is past loading and trains steps
        job = client.fine_tuning.jobs.retrieve(job.id)
        events = client.fine_tuning.jobs.list_events(job.id, limit=5).data
        if job.status in JOBS.terminal:
            raise SystemExit(f"the latency job ended early: {job.status} {job.error}")
        if any(e.type == "metrics" for e in events):
            break
        time.sleep(0.5)
    training = chat_latency(client, model, prompt, seconds)
    still = client.fine_tuning.jobs.retrieve(job.id).status
    client.fine_tuning.jobs.cancel(job.id)
    return {"idle": idle, "training": training, "ratio": training["median_s"] / idle["median_s"], "job_status": still}
