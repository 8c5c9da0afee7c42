"""The Responses API through the real SDK: the same engine as chat, stored and chained responses,
typed streaming events, function tools, and what cannot be honoured."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.conftest import ALICE, BOB, Conformance, LiveServer

HELLO = [{"role": "user", "content": "hello"}]


def chat_text(client: openai.OpenAI, messages: list[dict[str, object]], max_tokens: int = 6) -> str:
    r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=max_tokens, temperature=0)  # type: ignore[arg-type]
    return r.choices[0].message.content or ""


def test_a_response_is_what_chat_answers(client: openai.OpenAI, server: LiveServer, conformance: Conformance) -> None:
    r = client.responses.create(model="tiny", input="hello", max_output_tokens=6, temperature=0)
    assert r.object == "response" and r.id.startswith("resp_") and r.model == "tiny"
    assert r.output_text == chat_text(client, HELLO) and r.output_text
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"  # type: ignore[union-attr]
    assert r.usage.output_tokens == 6 and r.usage.total_tokens == r.usage.input_tokens + 6  # type: ignore[union-attr]
    raw = httpx.post(f"{server.base_url}/responses", json={"model": "tiny", "input": "hello", "max_output_tokens": 3})
    conformance.check("Response", raw.json())

    # instructions are the system turn; a list of messages is the conversation.
    sys = client.responses.create(
        model="tiny",
        instructions="answer briefly",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "hello"}]}],
        max_output_tokens=6,
        temperature=0,
    )
    assert sys.output_text == chat_text(client, [{"role": "system", "content": "answer briefly"}, *HELLO])


def test_stored_responses_chain_retrieve_and_delete(
    client: openai.OpenAI, server: LiveServer, conformance: Conformance
) -> None:
    first = client.responses.create(model="tiny", input="hello", max_output_tokens=4, temperature=0)
    assert client.responses.retrieve(first.id).output_text == first.output_text
    second = client.responses.create(
        model="tiny", input="again", previous_response_id=first.id, max_output_tokens=4, temperature=0
    )
    convo = [*HELLO, {"role": "assistant", "content": first.output_text}, {"role": "user", "content": "again"}]
    assert second.previous_response_id == first.id
    assert second.output_text == chat_text(client, convo, 4)
    assert second.usage.input_tokens > first.usage.input_tokens  # type: ignore[union-attr]

    # input_items: this response's own input (not the chain's), newest first unless asked, in pages.
    (said,) = client.responses.input_items.list(first.id).data
    assert said.type == "message" and said.role == "user" and said.content[0].text == "hello"  # type: ignore[union-attr]
    turns = [{"role": "user", "content": f"turn {i}"} for i in range(3)]
    third = client.responses.create(model="tiny", input=turns, previous_response_id=first.id, max_output_tokens=2)  # type: ignore[arg-type]
    body = httpx.get(
        f"{server.base_url}/responses/{third.id}/input_items", headers={"Authorization": "Bearer x"}
    ).json()
    conformance.check("ResponseItemList", body)
    assert [x["content"][0]["text"] for x in body["data"]] == ["turn 2", "turn 1", "turn 0"]
    page = client.responses.input_items.list(third.id, order="asc", limit=2)
    assert [x.content[0].text for x in page.data] == ["turn 0", "turn 1"] and page.has_more  # type: ignore[union-attr]
    rest = client.responses.input_items.list(third.id, order="asc", after=page.data[-1].id)
    assert [x.content[0].text for x in rest.data] == ["turn 2"] and not rest.has_more  # type: ignore[union-attr]
    every = [x.content[0].text for x in client.responses.input_items.list(third.id, order="asc", limit=1)]  # type: ignore[union-attr]
    assert every == ["turn 0", "turn 1", "turn 2"]  # the SDK's auto-pagination follows after/has_more

    gone = client.responses.delete(first.id)
    assert gone is None or getattr(gone, "deleted", True)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="tiny", input="x", previous_response_id=first.id)
    unstored = client.responses.create(model="tiny", input="hello", max_output_tokens=2, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


def test_stream_events_parse_in_the_sdk(client: openai.OpenAI, server: LiveServer, conformance: Conformance) -> None:
    whole = client.responses.create(model="tiny", input="hello", max_output_tokens=6, temperature=0)
    events = list(client.responses.create(model="tiny", input="hello", max_output_tokens=6, temperature=0, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")  # type: ignore[union-attr]
    assert deltas == whole.output_text
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output_text == whole.output_text and final.usage.output_tokens == 6
    assert client.responses.retrieve(final.id).output_text == whole.output_text
    with httpx.stream(
        "POST", f"{server.base_url}/responses", json={"model": "tiny", "input": "hi", "stream": True}
    ) as r:
        lines = [line for line in r.iter_lines() if line]
    assert lines[0] == "event: response.created" and lines[1].startswith("data: ")
    conformance.check("Response", json.loads(lines[-1].removeprefix("data: "))["response"])


WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.mark.parametrize("stream", [False, True])
def test_function_tools_call_and_take_results(client: openai.OpenAI, stream: bool) -> None:
    """A required call is held to the tools' grammar, so even the random tiny model makes a valid one."""
    kwargs = {"model": "tiny", "input": "weather in Paris?", "tools": [WEATHER], "tool_choice": "required"}
    if stream:
        events = list(client.responses.create(**kwargs, stream=True))  # type: ignore[call-overload]
        kinds = [e.type for e in events]
        assert "response.function_call_arguments.done" in kinds
        r = events[-1].response
    else:
        r = client.responses.create(**kwargs)  # type: ignore[call-overload]
    calls = [item for item in r.output if item.type == "function_call"]
    assert calls and calls[0].name == "get_weather" and calls[0].call_id.startswith("call_")
    assert isinstance(json.loads(calls[0].arguments)["city"], str)
    follow = client.responses.create(
        model="tiny",
        previous_response_id=r.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny, 21 C"}],
        tools=[WEATHER],
        tool_choice="none",
        max_output_tokens=4,
    )
    assert follow.status == "incomplete" and follow.output[0].type == "message"
    (result,) = client.responses.input_items.list(follow.id).data
    assert result.type == "function_call_output" and result.call_id == calls[0].call_id
    assert result.output == "sunny, 21 C" and result.id.startswith("fco_")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools"),
        ({"background": True}, "background"),
        ({"reasoning": {"effort": "high"}}, "reasoning"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input[0].content"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0]"),
        ({"tool_choice": {"type": "function", "name": "nope"}, "tools": [WEATHER]}, "tool_choice"),
    ],
)
def test_what_cannot_be_honoured_is_a_400(client: openai.OpenAI, body: dict[str, object], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(**{"model": "tiny", "input": "hi", **body})  # type: ignore[call-overload]
    assert e.value.param == param, e.value.message


def test_an_owner_never_sees_another_owners_responses(keyed_server: LiveServer) -> None:
    alice = openai.OpenAI(base_url=keyed_server.base_url, api_key=ALICE, max_retries=0)
    bob = openai.OpenAI(base_url=keyed_server.base_url, api_key=BOB, max_retries=0)
    r = alice.responses.create(model="tiny", input="hello", max_output_tokens=2)
    assert alice.responses.retrieve(r.id).id == r.id
    with pytest.raises(openai.NotFoundError):
        bob.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        bob.responses.create(model="tiny", input="x", previous_response_id=r.id)
    with pytest.raises(openai.NotFoundError):
        bob.responses.input_items.list(r.id)
    with pytest.raises(openai.BadRequestError) as e:
        alice.responses.input_items.list(r.id, include=["message.input_image.image_url"])
    assert e.value.param == "include"
