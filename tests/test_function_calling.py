"""End to end on SmolLM2: fine-tuning teaches a model to call the right tool, and to use its result.

The data comes from two packages `make test` installs: trivia questions (chatterbot-corpus) and a
construction FAQ (zaragoza-construction-faq). Each example asks one question; the assistant calls
the tool for that kind of question with the question as its argument, gets the package's answer
back as the tool result, and answers with it. Held-out questions of both kinds are then sent to the
base and the fine-tuned model with `tools=`, through the SDK, plain and streamed.
"""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import LiveServer

pytestmark = pytest.mark.slow

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "trivia_lookup",
            "description": "Answer a general-knowledge trivia question",
            "parameters": {"type": "object", "properties": {"question": {"type": "string"}}, "required": ["question"]},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "construction_faq",
            "description": "Search the FAQ on building and renovating in Sweden",
            "parameters": {"type": "object", "properties": {"question": {"type": "string"}}, "required": ["question"]},
        },
    },
]


def questions() -> dict[str, list[tuple[str, str]]]:
    trivia = yaml.safe_load(files("chatterbot_corpus").joinpath("data/english/trivia.yml").read_text("utf-8"))
    faq = files("zaragoza_construction_faq").joinpath("data/faq-en.jsonl").read_text("utf-8").splitlines()
    faq_rows = [json.loads(line) for line in faq if line.strip()]
    return {
        "trivia_lookup": [(str(c[0]), str(c[1])) for c in trivia["conversations"] if len(c) == 2],
        # The answers run to a paragraph; their first sentence keeps the examples short.
        "construction_faq": [(r["q"], r["a"].split(". ")[0].rstrip(".") + ".") for r in faq_rows],
    }


def example(tool: str, question: str, answer: str, i: int) -> dict[str, Any]:
    call = {
        "id": f"call_{i}",
        "type": "function",
        "function": {"name": tool, "arguments": json.dumps({"question": question})},
    }
    return {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": f"call_{i}", "content": answer},
            {"role": "assistant", "content": answer},
        ],
        "tools": TOOLS,
    }


def norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def right_call(message: Any, tool: str, question: str) -> bool:
    calls = message.tool_calls or []
    if len(calls) != 1 or calls[0].function.name != tool:
        return False
    try:
        return norm(json.loads(calls[0].function.arguments).get("question", "")) == norm(question)
    except (json.JSONDecodeError, AttributeError):
        return False


def test_fine_tuning_teaches_smollm2_to_call_the_right_tool(smol_server: LiveServer, tmp_path: Path) -> None:
    client = smol_server.client(timeout=600)
    pool = questions()
    # The FAQ file is sorted by topic: take rows across all of it, so that both sets span its 39 topics.
    train = [("trivia_lookup", q, a) for q, a in pool["trivia_lookup"][:50]]
    train += [("construction_faq", q, a) for q, a in pool["construction_faq"][0::10][:50]]
    held = [("trivia_lookup", q, a) for q, a in pool["trivia_lookup"][200:206]]  # 12 unseen questions
    held += [("construction_faq", q, a) for q, a in pool["construction_faq"][5::80][:6]]
    path = tmp_path / "calls.jsonl"
    path.write_text("".join(json.dumps(example(t, q, a, i)) + "\n" for i, (t, q, a) in enumerate(train)))
    upload = client.files.create(file=path.open("rb"), purpose="fine-tune")
    t0 = time.monotonic()
    job = client.fine_tuning.jobs.create(
        model="SmolLM2-135M-Instruct",
        training_file=upload.id,
        hyperparameters={"n_epochs": 1, "learning_rate_multiplier": 3},
        seed=42,
    )
    while job.status not in ("succeeded", "failed", "cancelled"):
        time.sleep(2)
        job = client.fine_tuning.jobs.retrieve(job.id)
    trained = time.monotonic() - t0
    assert job.status == "succeeded", job.error
    tuned = job.fine_tuned_model
    assert tuned

    def ask(model: str, item: tuple[str, str, str]) -> Any:
        done = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": item[1]}], tools=TOOLS, max_tokens=96, temperature=0
        )
        return done.choices[0]

    def stream(item: tuple[str, str, str]) -> Any:
        with client.chat.completions.stream(
            model=tuned, messages=[{"role": "user", "content": item[1]}], tools=TOOLS, max_tokens=96, temperature=0
        ) as s:
            return s.get_final_completion().choices[0]

    def second_turn(item: tuple[str, str, str]) -> str:
        tool, question, answer = item
        call = {
            "id": "call_x",
            "type": "function",
            "function": {"name": tool, "arguments": json.dumps({"question": question})},
        }
        messages = [
            {"role": "user", "content": question},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_x", "content": answer},
        ]
        done = client.chat.completions.create(model=tuned, messages=messages, tools=TOOLS, max_tokens=96, temperature=0)  # type: ignore[arg-type]
        return done.choices[0].message.content or ""

    t1 = time.monotonic()
    with ThreadPoolExecutor(6) as ex:  # concurrent requests decode together on the engine
        base = list(ex.map(lambda it: ask("SmolLM2-135M-Instruct", it), held))
        plain = list(ex.map(lambda it: ask(tuned, it), held))
        streamed = list(ex.map(stream, held))
        replies = list(ex.map(second_turn, held))
    scores = {
        name: sum(right_call(c.message, t, q) for c, (t, q, _) in zip(choices, held, strict=True))
        for name, choices in (("base", base), ("fine-tuned", plain), ("fine-tuned, streamed", streamed))
    }
    used = sum(norm(a) in norm(r) for r, (_, _, a) in zip(replies, held, strict=True))
    misses = [
        (t, q, [(c.function.name, c.function.arguments) for c in ch.message.tool_calls or []] or ch.message.content)
        for ch, (t, q, _) in zip(plain, held, strict=True)
        if not right_call(ch.message, t, q)
    ]
    print(
        f"\n{len(train)} tool-calling examples x 1 epoch: {trained:.0f}s; right tool and argument on "
        f"{len(held)} held-out questions: {scores}; second turn answers with the tool's result: {used}/{len(held)} "
        f"({time.monotonic() - t1:.0f}s of requests); fine-tuned misses: {misses}"
    )
    for choice in plain:
        if choice.message.tool_calls:
            assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert scores["fine-tuned"] >= 8 and scores["fine-tuned"] >= scores["base"] + 6
    assert scores["fine-tuned, streamed"] >= 8
    assert used >= 8
