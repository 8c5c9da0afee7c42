"""/v1/chat/completions through the real openai SDK: JSON, streaming, parameters and errors."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from tests.conftest import Conformance, LiveServer

HELLO = [{"role": "user", "content": "hello"}]


def test_completion_shape_usage_and_length(client: openai.OpenAI, server: LiveServer, conformance: Conformance) -> None:
    r = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=5, temperature=0)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == "tiny"
    assert r.choices[0].finish_reason == "length" and r.choices[0].message.role == "assistant"
    assert r.usage is not None and r.usage.completion_tokens == 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + 5 and r.usage.prompt_tokens > 3
    raw = httpx.post(
        f"{server.base_url}/chat/completions", json={"model": "tiny", "messages": HELLO, "max_tokens": 3}
    ).json()
    conformance.check("CreateChatCompletionResponse", raw)
    ChatCompletion.model_validate(raw)


def test_stream_parses_in_the_sdk_and_matches_the_wire(
    client: openai.OpenAI, server: LiveServer, conformance: Conformance
) -> None:
    kwargs = {"model": "tiny", "messages": HELLO, "max_completion_tokens": 6, "temperature": 0}
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))  # type: ignore[call-overload]
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    assert all(c.usage is None for c in chunks[:-1]) and len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    whole = client.chat.completions.create(**kwargs)  # type: ignore[call-overload]
    assert text == whole.choices[0].message.content
    # The raw wire: data-only events, usage chunk, then [DONE] and the end of the body.
    with httpx.stream(
        "POST",
        f"{server.base_url}/chat/completions",
        json={**kwargs, "stream": True, "stream_options": {"include_usage": True}},
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events) and events[-1] == "data: [DONE]"
    import json

    for line in events[:-1]:
        body = json.loads(line.removeprefix("data: "))
        conformance.check("CreateChatCompletionStreamResponse", body)
        ChatCompletionChunk.model_validate(body)
    # Without include_usage there is no usage key at all.
    plain = [json.loads(e[6:]) for e in _raw_stream(server, {**kwargs, "stream": True})[:-1]]
    assert all("usage" not in c for c in plain)


def _raw_stream(server: LiveServer, body: dict[str, object]) -> list[str]:
    with httpx.stream("POST", f"{server.base_url}/chat/completions", json=body) as r:
        return [line for line in r.iter_lines() if line]


def test_seed_n_stop_and_content_parts(client: openai.OpenAI) -> None:
    args = {"model": "tiny", "max_tokens": 12, "temperature": 1.0}
    a = client.chat.completions.create(messages=HELLO, seed=7, **args)  # type: ignore[call-overload]
    b = client.chat.completions.create(messages=HELLO, seed=7, **args)  # type: ignore[call-overload]
    assert a.choices[0].message.content == b.choices[0].message.content
    many = client.chat.completions.create(messages=HELLO, n=3, seed=1, **args)  # type: ignore[call-overload]
    assert [c.index for c in many.choices] == [0, 1, 2]
    assert many.usage is not None and many.usage.completion_tokens == 36
    greedy = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=20, temperature=0)
    full = greedy.choices[0].message.content or ""
    assert len(full) > 4
    stop = full[2:4]
    cut = client.chat.completions.create(
        model="tiny", messages=HELLO, max_tokens=20, temperature=0, stop=[stop, "zzzz"]
    )
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == full[: full.index(stop)]
    parts = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": [{"type": "text", "text": "hello"}]}],
        max_tokens=20,
        temperature=0,
    )
    assert parts.choices[0].message.content == full


def test_stop_strings_across_token_boundaries_streamed_and_not(client: openai.OpenAI) -> None:
    """Sampled text (greedy text of a random model repeats one token), cut at stop strings that start
    and end anywhere, so they straddle tokens; the streamed pieces must add up to the same text."""
    args = {"model": "tiny", "messages": HELLO, "max_tokens": 40, "temperature": 1.0, "seed": 11}
    full = client.chat.completions.create(**args).choices[0].message.content or ""  # type: ignore[call-overload]
    assert len(full) > 20
    cuts = [(start, 2 + start % 3) for start in range(min(24, len(full) - 5))] + [(len(full) - 4, 4)]
    for start, size in cuts:
        stop = full[start : start + size]
        want = full[: full.index(stop)]
        cut = client.chat.completions.create(stop=[stop], **args)  # type: ignore[call-overload]
        assert (cut.choices[0].message.content, cut.choices[0].finish_reason) == (want, "stop"), stop
        chunks = client.chat.completions.create(stop=[stop], stream=True, **args)  # type: ignore[call-overload]
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == want, stop


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "tiny", "messages": []}, "messages"),
        ({"model": "tiny"}, "messages"),
        ({"messages": HELLO}, "model"),
        ({"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ({"model": "tiny", "messages": HELLO, "temperature": 3}, "temperature"),
        ({"model": "tiny", "messages": HELLO, "n": 0}, "n"),
        ({"model": "tiny", "messages": HELLO, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        (
            {
                "model": "tiny",
                "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
            },
            "messages.0.content",
        ),
    ],
)
def test_bad_requests_are_400_with_param(server: LiveServer, body: dict[str, object], param: str) -> None:
    r = httpx.post(f"{server.base_url}/chat/completions", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["message"]


def test_error_classes_in_the_sdk(client: openai.OpenAI, server: LiveServer) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=HELLO)  # type: ignore[arg-type]
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=HELLO, stream=True)  # type: ignore[arg-type]
    r = httpx.post(
        f"{server.base_url}/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    long = [{"role": "user", "content": "hello " * 5000}]
    with pytest.raises(openai.BadRequestError) as e2:
        client.chat.completions.create(model="tiny", messages=long)  # type: ignore[arg-type]
    assert e2.value.code == "context_length_exceeded"
    r = httpx.get(f"{server.url}/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url"
    assert r.headers["x-request-id"] == r.headers["request-id"]


def test_unknown_keys_are_ignored_and_aliases_report_the_real_model(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="gpt-3.5-turbo", messages=HELLO, max_tokens=2, user="u1", logit_bias={}, extra_body={"brand_new": 1}
    )
    assert r.model == "tiny"  # the server's default model, not the alias


def test_health_answers_during_generation_and_disconnect_stops_it(server: LiveServer) -> None:
    body = {"model": "tiny", "messages": HELLO, "max_tokens": 3900, "stream": True, "temperature": 0}
    got_first = threading.Event()

    def stream_then_hang_up() -> None:
        with httpx.stream("POST", f"{server.base_url}/chat/completions", json=body, timeout=60) as r:
            for _ in r.iter_lines():
                got_first.set()
                break

    t = threading.Thread(target=stream_then_hang_up)
    t.start()
    assert got_first.wait(60)
    t.join()
    t0 = time.monotonic()
    assert server.health()["status"] == "ok"  # the event loop is free while tokens are generated
    while server.health()["active_generations"] and time.monotonic() - t0 < 10:
        time.sleep(0.1)
    assert server.health()["active_generations"] == 0, "generation kept running after the client left"


def test_legacy_engine_route_and_double_slash(server: LiveServer) -> None:
    r = httpx.post(f"{server.url}/v1//engines/tiny/chat/completions", json={"messages": HELLO, "max_tokens": 2})
    assert r.status_code == 200 and r.json()["model"] == "tiny"
