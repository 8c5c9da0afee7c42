"""Continuous batching in the engine: concurrent requests on one base model, with and without an
adapter, prompts of different lengths, give exactly what each gives alone; a client that leaves
mid-batch does not disturb the others.

Answers are sampled with a seed per request, so every token depends on the whole distribution,
and so on every position of the cache: a wrong mask or position shows at once, where greedy
answers of a random model (one token repeated) might not. Batching changes the shapes of the
matmuls and so the last bits of the logits; a sample flips only if its draw lands that close to
a boundary (about one in a million). The tiny model's final norm is scaled up (logits x3) so
that it does not only babble uniformly; the adapter is random-init LoRA (B not zero), so it
changes the answers.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from selftune.store import ModelRecord, Store
from tests.conftest import LiveServer, run_cli

FT = "ft:sharp:local:batch:abcd1234"
PROMPTS = [
    "hello",
    "What is the capital of France?",
    "The quick brown fox jumps over the lazy dog. What does the fox do, and what does the dog do?",
    "question answer",
]


@pytest.fixture(scope="module")
def sharp(server: LiveServer, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("sharp")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.model.norm.weight.mul_(3)
    model.save_pretrained(folder / "base")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder / "base")
    run_cli("models", "add", "sharp", str(folder / "base"), env={"SELFTUNE_HOME": str(server.home)})
    torch.manual_seed(1)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(folder / "adapter")
    store = Store(f"sqlite:///{server.home / 'selftune.db'}")
    store.insert_model(ModelRecord(FT, "local", 1700000000, "sharp", str(folder / "adapter"), None))
    store.close()
    return "sharp"


def ask(client: openai.OpenAI, model: str, prompt: str, stream: bool, seed: int) -> str:
    messages = [{"role": "user", "content": prompt}]
    kw = {"model": model, "messages": messages, "max_tokens": 24, "temperature": 1, "seed": seed}
    if stream:
        return "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **kw))  # type: ignore[call-overload]
    return client.chat.completions.create(**kw).choices[0].message.content or ""  # type: ignore[call-overload]


def test_concurrent_requests_answer_exactly_as_alone(client: openai.OpenAI, server: LiveServer, sharp: str) -> None:
    jobs = [(model, p, i % 2 == 0, i) for i, p in enumerate(PROMPTS) for model in (sharp, FT)]
    alone = [ask(client, *job) for job in jobs]
    assert len(set(alone)) == len(jobs), alone  # the prompt, the adapter and the seed all matter

    # All at once, plus one long streaming request whose client hangs up after a few chunks.
    start = threading.Barrier(len(jobs) + 1)
    left = threading.Event()

    def leave_early() -> None:
        body = {"model": FT, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 400, "stream": True}
        start.wait()
        with httpx.stream("POST", f"{server.base_url}/chat/completions", json=body, timeout=60) as r:
            for n, _ in enumerate(r.iter_lines()):
                if n == 6:
                    break
        left.set()

    def together(job: tuple[str, str, bool, int]) -> str:
        start.wait()
        return ask(client, *job)

    with ThreadPoolExecutor(len(jobs) + 1) as pool:
        quitter = pool.submit(leave_early)
        batched = list(pool.map(together, jobs))
        quitter.result()
    assert left.is_set()
    assert batched == alone
    health = server.health()
    assert health["largest_batch"] >= 4, health  # they really were decoded together
    assert health["active_generations"] == 0 and health["queued_generations"] == 0, health


def test_n_choices_with_a_seed_are_reproducible_in_a_batch(client: openai.OpenAI, sharp: str) -> None:
    kw = {"model": FT, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 12, "n": 3, "seed": 7}
    first = [c.message.content for c in client.chat.completions.create(**kw).choices]  # type: ignore[call-overload]
    with ThreadPoolExecutor(2) as pool:
        again = list(pool.map(lambda _: client.chat.completions.create(**kw), range(2)))  # type: ignore[call-overload]
    for r in again:
        assert [c.message.content for c in r.choices] == first
    assert len(set(first)) > 1  # different seeds per choice: the choices differ
