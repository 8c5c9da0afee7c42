"""Chat completions: an answer, or Server-Sent Events when ``stream=true`` (the route is ``server.chat``).

The stream follows OpenAI's wire format exactly: ``data: {chunk}`` events only (no ``event:``
lines, which break 1.x SDKs), a role chunk, content chunks, a finish chunk per choice, the usage
chunk when ``stream_options.include_usage`` is set, then ``data: [DONE]``. With ``tools``, calls
are parsed out of the answer (``selftune.inference.tools``) into ``tool_calls``, streamed as
OpenAI does (id and name first, then argument fragments), with ``finish_reason: "tool_calls"``;
a request with ``functions`` gets ``function_call`` back. Parameters selftune cannot honour are 400s.

Generation runs on the engine's thread, reached through ``serving.bridge``. A client that
disconnects cancels its generation at the next token.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

from selftune.catalog import Resolved
from selftune.data.render import normalize_tools
from selftune.errors import InvalidRequest
from selftune.ids import now, random_id
from selftune.inference.generation import Event, SamplingParams
from selftune.inference.tools import ParsedCall, ToolPlan, ToolStream, parse_calls
from selftune.inference.tools import plan as tools_plan
from selftune.permissions import resolve_callable
from selftune.schemas.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessage,
    ChatCompletionRequest,
    Choice,
    ChoiceDelta,
    ChunkChoice,
    DeltaFunction,
    DeltaToolCall,
    FunctionCall,
    ToolCall,
)
from selftune.services import Services
from selftune.serving.bridge import Bridge, Disconnected, Stream, collect, events, sse_error, start, usage


async def chat(
    body: ChatCompletionRequest, services: Services, owner: str, disconnected: Disconnected | None
) -> ChatCompletion | Stream:
    """A chat completion, or its stream; ``disconnected`` cancels a collected answer whose client left."""

    def resolved() -> tuple[ToolPlan, dict[str, Any]]:
        model = resolve_callable(services.catalog, body.model, owner)
        return prepare(body, model, services.settings.default_max_tokens)

    plan, generation = await asyncio.to_thread(resolved)  # database, grammars: off the loop
    (bridge,) = start(services, owner, [generation])
    first = await bridge.first()
    meta = {"id": random_id("chatcmpl-"), "created": now(), "model": bridge.gen.model.id}
    n = bridge.gen.n
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return Stream(_sse(bridge, first, n, meta, include_usage, plan))
    got = await collect(bridge, first, n, disconnected)
    choices = [_choice(i, got.texts[i], got.finish[i], plan) for i in range(n)]
    return ChatCompletion(choices=choices, usage=usage(got.prompt_tokens, got.completion_tokens), **meta)


def prepare(body: ChatCompletionRequest, model: Resolved, default_max_tokens: int) -> tuple[ToolPlan, dict[str, Any]]:
    """What the request asks for ``model`` (resolved), checked: its tool plan and its generation's
    fields. Also how a reinforcement job's trainer asks its judges (``train.judging``)."""
    for param, why in body.unsupported():
        raise InvalidRequest(why, param=param, code="unsupported_parameter")
    legacy = bool(body.functions) and not body.tools
    tools = normalize_tools(body.tools, body.functions)
    plan = tools_plan(
        tools,
        body.function_call if legacy else body.tool_choice,
        body.parallel_tool_calls,
        body.response_format,
        legacy,
    )
    params = SamplingParams.requested(
        body.max_completion_tokens or body.max_tokens,
        default_max_tokens,
        body.temperature,
        body.top_p,
        body.stop_list,
        body.seed,
    )
    messages = [m.model_dump(exclude_none=True) for m in body.messages]
    generation = {
        "model": model,
        "messages": messages,
        "params": params,
        "n": body.n or 1,
        "tools": plan.tools,
        "grammar": plan.grammar,
        "lazy_grammar": plan.lazy_grammar,
    }
    return plan, generation


def _choice(index: int, text: str, finish: str, plan: ToolPlan) -> Choice:
    """A finished choice; with tools, its calls parsed out of the text into ``tool_calls``."""
    calls: list[ParsedCall] = []
    content: str | None = text
    if plan.parse:
        content, calls = parse_calls(text)
        calls = calls if plan.parallel else calls[:1]
    if not calls:
        return Choice(index=index, message=ChatCompletionMessage(content=text), finish_reason=finish)
    if plan.legacy:
        call = FunctionCall(name=calls[0].name, arguments=calls[0].arguments)
        message = ChatCompletionMessage(content=content, function_call=call)
        return Choice(index=index, message=message, finish_reason="function_call")
    tool_calls = [ToolCall(id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments)) for c in calls]
    message = ChatCompletionMessage(content=content, tool_calls=tool_calls)
    return Choice(index=index, message=message, finish_reason="tool_calls" if finish == "stop" else finish)


def _data(obj: ChatCompletionChunk) -> str:
    return f"data: {obj.model_dump_json(exclude_unset=True)}\n\n"


async def _sse(
    bridge: Bridge, first: Event, n: int, meta: dict[str, object], include_usage: bool, plan: ToolPlan
) -> AsyncIterator[str]:
    extra = {"usage": None} if include_usage else {}
    streams = [ToolStream() for _ in range(n)] if plan.parse else []

    def chunk(index: int, delta: ChoiceDelta, finish: str | None = None) -> str:
        choice = ChunkChoice(index=index, delta=delta, logprobs=None, finish_reason=finish)
        return _data(ChatCompletionChunk(choices=[choice], **meta, **extra))

    def pieces(event: Event) -> Iterator[str]:
        """Content deltas, and each finished call as OpenAI streams one: id and name, then arguments."""
        if not streams:
            if event.text:
                yield chunk(event.index, ChoiceDelta(content=event.text))
            return
        stream = streams[event.index]
        before = len(stream.calls)
        content, calls = stream.feed(event.text, final=bool(event.finish_reason))
        if content:
            yield chunk(event.index, ChoiceDelta(content=content))
        for k, call in enumerate(calls, start=before):
            if k > 0 and not plan.parallel:
                break
            if plan.legacy:
                yield chunk(event.index, ChoiceDelta(function_call=DeltaFunction(name=call.name, arguments="")))
                yield chunk(event.index, ChoiceDelta(function_call=DeltaFunction(arguments=call.arguments)))
                continue
            head = DeltaToolCall(
                index=k, id=call.id, type="function", function=DeltaFunction(name=call.name, arguments="")
            )
            yield chunk(event.index, ChoiceDelta(tool_calls=[head]))
            for fragment in _fragments(call.arguments):
                tail = DeltaToolCall(index=k, function=DeltaFunction(arguments=fragment))
                yield chunk(event.index, ChoiceDelta(tool_calls=[tail]))

    try:
        for i in range(n):
            yield chunk(i, ChoiceDelta(role="assistant", content=""))
        tokens = 0
        try:
            async for event in events(bridge, first, n):
                for line in pieces(event):
                    yield line
                if event.finish_reason:
                    finish = event.finish_reason
                    if streams and streams[event.index].calls and finish == "stop":
                        finish = "function_call" if plan.legacy else "tool_calls"
                    yield chunk(event.index, ChoiceDelta(), finish)
                    tokens += event.completion_tokens
        except Exception as e:
            yield sse_error(e)
            return
        if include_usage:
            yield _data(ChatCompletionChunk(choices=[], usage=usage(bridge.gen.prompt_tokens, tokens), **meta))
        yield "data: [DONE]\n\n"
    finally:
        # Runs on normal end, on error, and when Starlette cancels us because the client left.
        bridge.gen.cancel.set()


def _fragments(arguments: str, size: int = 16) -> list[str]:
    """Arguments in pieces, as OpenAI streams them (clients must concatenate, not parse each)."""
    return [arguments[i : i + size] for i in range(0, len(arguments), size)] or [""]
