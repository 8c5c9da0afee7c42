"""Function calling and structured output through the real SDK, on the tiny random model.

A random model cannot choose a tool, so these tests check the plumbing: constrained decoding makes
even its output valid (a call to a defined function with schema-valid arguments, JSON matching a
schema), the SDK parses what we send (plain and streamed), legacy ``functions`` get
``function_call``, and what cannot be honoured is a 400. Whether fine-tuning teaches a model to
call the right tool is tested end to end on SmolLM2 (tests/test_seeds.py).
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from jsonschema import Draft202012Validator
from pydantic import BaseModel

from tests.conftest import Conformance

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city now",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["C", "F"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "integer"}}, "required": ["zone"]},
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


class Person(BaseModel):
    name: str
    age: int
    languages: list[str]
    retired: bool


def check_call(name: str, arguments: str) -> None:
    tool = {"get_weather": WEATHER, "get_time": TIME}[name]
    Draft202012Validator(tool["function"]["parameters"]).validate(json.loads(arguments))


def test_response_format_json_schema_is_always_valid(client: openai.OpenAI) -> None:
    for i in range(20):
        done = client.chat.completions.parse(
            model="tiny",
            messages=[{"role": "user", "content": f"Describe person number {i} as JSON."}],
            response_format=Person,
            max_tokens=120,
            seed=i,
        )
        assert isinstance(done.choices[0].message.parsed, Person), done.choices[0].message.content
    plain = client.chat.completions.create(
        model="tiny", messages=ASK, response_format={"type": "json_object"}, max_tokens=60, seed=1
    )
    assert isinstance(json.loads(plain.choices[0].message.content or ""), dict)


def test_required_tool_calls_plain_and_streamed(client: openai.OpenAI, conformance: Conformance) -> None:
    args: dict[str, Any] = {"model": "tiny", "messages": ASK, "tools": [WEATHER, TIME], "max_tokens": 120, "seed": 3}
    for choice in ("required", {"type": "function", "function": {"name": "get_time"}}):
        done = client.chat.completions.create(tool_choice=choice, **args)  # type: ignore[arg-type]
        conformance.check("CreateChatCompletionResponse", done.model_dump(exclude_unset=True))
        message = done.choices[0].message
        assert done.choices[0].finish_reason == "tool_calls" and message.tool_calls
        for call in message.tool_calls:
            assert call.id.startswith("call_") and call.type == "function"
            check_call(call.function.name, call.function.arguments)
        if isinstance(choice, dict):
            assert [c.function.name for c in message.tool_calls] == ["get_time"]
        # The SDK's stream helper reassembles the streamed deltas into the same calls.
        with client.chat.completions.stream(tool_choice=choice, **args) as stream:  # type: ignore[arg-type]
            final = stream.get_final_completion()
        streamed = final.choices[0].message.tool_calls or []
        assert [(c.function.name, c.function.arguments) for c in streamed] == [
            (c.function.name, c.function.arguments) for c in message.tool_calls
        ]
        assert final.choices[0].finish_reason == "tool_calls"
    one = client.chat.completions.create(tool_choice="required", parallel_tool_calls=False, **args)
    assert len(one.choices[0].message.tool_calls or []) == 1


def test_a_conversation_continues_after_the_tool_result(client: openai.OpenAI) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "C"}'},
    }
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [call]}]
    history.append({"role": "tool", "tool_call_id": "call_1", "content": "18 C and sunny"})
    done = client.chat.completions.create(model="tiny", messages=history, tools=[WEATHER], max_tokens=8)  # type: ignore[arg-type]
    assert done.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_legacy_functions_get_function_call(client: openai.OpenAI) -> None:
    done = client.chat.completions.create(
        model="tiny",
        messages=ASK,
        functions=[WEATHER["function"]],  # type: ignore[list-item]
        function_call={"name": "get_weather"},
        max_tokens=200,
        seed=2,
    )
    choice = done.choices[0]
    assert choice.finish_reason == "function_call" and choice.message.function_call is not None
    check_call(choice.message.function_call.name, choice.message.function_call.arguments)
    assert choice.message.tool_calls is None


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"logprobs": True}, "logprobs"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {"parameters": {}}}]}, "tools"),
        ({"response_format": {"type": "yaml"}}, None),
        ({"tools": [WEATHER], "tool_choice": "required", "max_tokens": 5}, "max_tokens"),
    ],
)
def test_what_cannot_be_honoured_is_a_400(client: openai.OpenAI, extra: dict[str, Any], param: str | None) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(**{"model": "tiny", "messages": ASK, "max_tokens": 4, **extra})
    body = err.value.body
    assert isinstance(body, dict) and body.get("message")
    if param:
        assert str(body.get("param", "")).startswith(param), body


def test_a_lazy_grammar_takes_over_a_call_the_model_started(tiny_model_dir: Any) -> None:
    """tool_choice "auto": the engine starts the calls grammar on the tokens written so far, once
    the answer opens with <tool_call>, so a call the model began is finished as valid JSON."""
    from transformers import AutoTokenizer

    from selftune.inference.constrain import RowConstraint, Vocabulary
    from selftune.inference.tools import plan

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    grammar = plan([WEATHER, TIME], "auto", None, None).lazy_grammar
    assert grammar is not None
    vocab = Vocabulary.build(tok, {tok.eos_token_id}, len(tok))
    started = RowConstraint(vocab, grammar, reserve=0)
    assert started.follow(tok('<tool_call>\n{"name": "get_', add_special_tokens=False)["input_ids"])
    allowed = started.allowed()
    assert allowed.sum() > 0 and not allowed[tok.eos_token_id]  # mid-call: only the rest of a name
    assert not RowConstraint(vocab, grammar, reserve=0).follow(
        tok("Hello there", add_special_tokens=False)["input_ids"]
    )
