"""Legacy ``/v1/completions`` through both SDKs, and training on legacy prompt/completion lines.

A prompt-style fine-tune of the tiny model learns its completion and answers it here, through the
same plain-text rendering that training used; the base model does not.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from openai.types import Completion

from tests.conftest import Conformance, LiveServer, run_legacy
from tests.test_jobs_api import upload, wait

PROMPT = "What is the capital of France?"


def test_shape_usage_echo_n_and_several_prompts(
    client: openai.OpenAI, server: LiveServer, conformance: Conformance
) -> None:
    r = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=5, temperature=0)
    assert r.object == "text_completion" and r.id.startswith("cmpl-") and r.model == "tiny"
    assert r.choices[0].finish_reason == "length" and r.choices[0].index == 0 and r.choices[0].text
    assert r.usage is not None and r.usage.completion_tokens == 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + 5
    raw = httpx.post(f"{server.base_url}/completions", json={"model": "tiny", "prompt": PROMPT, "max_tokens": 3})
    conformance.check("CreateCompletionResponse", raw.json())
    Completion.model_validate(raw.json())
    # Without max_tokens OpenAI's default of 16 applies.
    assert client.completions.create(model="tiny", prompt=PROMPT, temperature=0).usage.completion_tokens == 16  # type: ignore[union-attr]

    echoed = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=5, temperature=0, echo=True)
    assert echoed.choices[0].text == PROMPT + r.choices[0].text

    many = client.completions.create(model="tiny", prompt=[PROMPT, "hello world"], n=2, max_tokens=4, seed=3)
    assert [c.index for c in many.choices] == [0, 1, 2, 3]
    alone = client.completions.create(model="tiny", prompt="hello world", max_tokens=4, temperature=0)
    greedy = client.completions.create(model="tiny", prompt=[PROMPT, "hello world"], max_tokens=4, temperature=0)
    assert [c.text for c in greedy.choices] == [r.choices[0].text[: len(greedy.choices[0].text)], alone.choices[0].text]
    assert many.usage is not None and many.usage.completion_tokens == 16

    # Token ids are a prompt too: the same ids give the same greedy answer.
    ids = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=1, temperature=0, echo=True)
    assert ids.choices[0].text.startswith(PROMPT)


def test_stream_matches_the_whole_answer(client: openai.OpenAI, server: LiveServer, conformance: Conformance) -> None:
    kwargs = {"model": "tiny", "prompt": PROMPT, "max_tokens": 6, "temperature": 0}
    whole = client.completions.create(**kwargs)  # type: ignore[call-overload]
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))  # type: ignore[call-overload]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6
    with httpx.stream("POST", f"{server.base_url}/completions", json={**kwargs, "stream": True, "echo": True}) as r:
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    bodies = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert bodies[0]["choices"][0]["text"] == PROMPT and "usage" not in bodies[0]
    for body in bodies:
        conformance.check("CreateCompletionResponse", body)  # finish_reason null until the end, as OpenAI streams
    Completion.model_validate(bodies[-1])


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"suffix": "end"}, "suffix"),
        ({"logprobs": 2}, "logprobs"),
        ({"best_of": 3}, "best_of"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": [1, 2], "echo": True}, "echo"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ],
)
def test_what_cannot_be_honoured_is_a_400(client: openai.OpenAI, body: dict[str, object], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(**{"model": "tiny", "prompt": PROMPT, **body})  # type: ignore[call-overload]
    assert e.value.param == param, e.value.message


def test_unknown_model_is_a_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="ft:tiny:local::nope", prompt=PROMPT)


def test_a_prompt_completion_fine_tune_answers_through_completions(client: openai.OpenAI, server: LiveServer) -> None:
    """The legacy format trains only the completion (and EOS) after the plain-text prompt."""
    lines = [{"prompt": f"question {i}\n\n###\n\n", "completion": " the lazy dog"} for i in range(12)]
    train = upload(client, "".join(json.dumps(x) + "\n" for x in lines), "legacy.jsonl")
    job = client.fine_tuning.jobs.create(
        model="tiny", training_file=train, seed=0, hyperparameters={"n_epochs": 8, "learning_rate_multiplier": 10}
    )
    done = wait(client, job.id)
    assert done.status == "succeeded", done.error
    prompt = "question 40\n\n###\n\n"
    tuned = client.completions.create(model=done.fine_tuned_model, prompt=prompt, max_tokens=12, temperature=0)
    base = client.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0)
    # (A random-init model this small learns the words before it learns to stop: test_render checks EOS is trained.)
    assert tuned.choices[0].text.startswith(" the lazy dog"), tuned.choices[0].text
    assert not base.choices[0].text.startswith(" the lazy dog")
    # The legacy 0.28 SDK's module API reaches the same route.
    code = (
        f"r = openai.Completion.create(model={done.fine_tuned_model!r}, prompt={prompt!r}, max_tokens=12, "
        "temperature=0)\nprint(json.dumps(r['choices'][0]['text']))"
    )
    assert run_legacy(code, server.base_url) == tuned.choices[0].text
