"""Responses: create (a response, or its typed events), retrieve, list input items and delete stored
responses (the routes are ``server.responses``).

A request becomes chat messages (``instructions`` as the system turn, then the stored conversation
of ``previous_response_id``, then ``input``) and runs on the same engine, with the same limits,
tools and JSON constraints as ``/v1/chat/completions``. Function tools use the Responses shape
(``{"type": "function", "name", "parameters"}``); calls come back as ``function_call`` output
items, and their results go back in as ``function_call_output`` input items.

A stored response (``store``, the default) keeps its conversation without the instructions, which
OpenAI does not carry over to a chained response either. Streams are the typed events the SDKs parse
(``event: <type>`` and a ``data`` object with the same ``type`` and a ``sequence_number``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from selftune.data.render import normalize_tools
from selftune.errors import InvalidRequest
from selftune.ids import now, random_id
from selftune.inference.generation import Event, SamplingParams
from selftune.inference.tools import ParsedCall, ToolPlan, ToolStream, parse_calls
from selftune.inference.tools import plan as tools_plan
from selftune.permissions import resolve_callable
from selftune.schemas.responses import (
    FunctionCallItem,
    InputItem,
    InputItemList,
    OutputMessage,
    OutputText,
    ResponseCreateRequest,
    ResponseDeleted,
    ResponseObject,
    ResponseUsage,
    StoredResponse,
)
from selftune.services import Services
from selftune.serving.bridge import Bridge, Disconnected, Stream, as_error, collect, events, start
from selftune.serving.response_input import output_message, read_input, response_format
from selftune.statuses import ItemStatus, ResponseStatus


def retrieve(services: Services, owner: str, response_id: str) -> ResponseObject:
    return services.responses.get(owner, response_id).response


def input_items(
    services: Services, owner: str, response_id: str, *, limit: int, order: str, after: str | None
) -> InputItemList:
    """The items of this response's own ``input`` (not those of the responses it chains on), newest first
    by default, as OpenAI lists them."""
    items = list(services.responses.get(owner, response_id).input_items)
    if order == "desc":
        items.reverse()
    if after is not None:
        ids = [item.id for item in items]
        if after not in ids:
            raise InvalidRequest(f"No input item {after!r} in response {response_id}", param="after")
        items = items[ids.index(after) + 1 :]
    page = items[:limit]
    return InputItemList(
        data=page,
        first_id=page[0].id if page else None,
        last_id=page[-1].id if page else None,
        has_more=len(items) > limit,
    )


def delete(services: Services, owner: str, response_id: str) -> ResponseDeleted:
    services.responses.delete(owner, response_id)
    return ResponseDeleted(id=response_id)


# --- request -> generation -----------------------------------------------------------------------


@dataclass
class _Turn:
    """A request made ready: what to generate from, how, and what the response will echo."""

    body: ResponseCreateRequest
    conversation: list[dict[str, Any]]
    """The stored conversation before this turn's answer (no instructions)."""
    items: list[InputItem]
    """This turn's ``input`` as ``GET /responses/{id}/input_items`` lists it."""
    plan: ToolPlan
    generation: dict[str, Any]
    """The fields of the ``Generation`` that answers it."""
    template: ResponseObject
    calls: list[ParsedCall] = field(default_factory=list)
    bridge: Bridge = field(init=False)
    """Set once the generation is admitted and started."""


def _prepare(body: ResponseCreateRequest, services: Services, owner: str) -> _Turn:
    for param, why in body.unsupported():
        raise InvalidRequest(why, param=param, code="unsupported_parameter")
    history: list[dict[str, Any]] = []
    if body.previous_response_id:
        history = services.responses.get(owner, body.previous_response_id).conversation
    said, items = read_input(body.input)
    conversation = [*history, *said]
    chat_tools = [
        {"type": "function", "function": {k: v for k, v in t.items() if k not in ("type",)}} for t in body.tools or []
    ]
    choice = body.tool_choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        choice = {"type": "function", "function": {"name": choice.get("name")}}
    plan = tools_plan(normalize_tools(chat_tools), choice, body.parallel_tool_calls, response_format(body))
    resolved = resolve_callable(services.catalog, body.model, owner)
    params = SamplingParams.requested(
        body.max_output_tokens, services.settings.default_max_tokens, body.temperature, body.top_p
    )
    system = [{"role": "system", "content": body.instructions}] if body.instructions else []
    generation = {
        "model": resolved,
        "messages": [*system, *conversation],
        "params": params,
        "tools": plan.tools,
        "grammar": plan.grammar,
        "lazy_grammar": plan.lazy_grammar,
    }
    template = ResponseObject(
        id=random_id("resp_"),
        created_at=now(),
        status=ResponseStatus.IN_PROGRESS,
        instructions=body.instructions,
        max_output_tokens=body.max_output_tokens,
        model=resolved.id,
        output=[],
        parallel_tool_calls=body.parallel_tool_calls is not False,
        previous_response_id=body.previous_response_id,
        temperature=params.temperature,
        top_p=params.top_p,
        tool_choice=body.tool_choice or "auto",
        tools=body.tools or [],
        text=body.text or {"format": {"type": "text"}},
        store=body.store is not False,
        metadata=body.metadata or {},
        user=body.user,
    )
    return _Turn(body, conversation, items, plan, generation, template)


# --- the answer -> a response --------------------------------------------------------------------


def _finish(
    turn: _Turn, output: list[OutputMessage | FunctionCallItem], finish: str, usage: ResponseUsage
) -> ResponseObject:
    incomplete = finish == "length"
    return turn.template.model_copy(
        update={
            "status": ResponseStatus.INCOMPLETE if incomplete else ResponseStatus.COMPLETED,
            "completed_at": None if incomplete else now(),
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "output": output,
            "usage": usage,
        }
    )


def _store(services: Services, owner: str, turn: _Turn, resp: ResponseObject, text: str | None) -> None:
    if not resp.store:
        return
    answer: dict[str, Any] = {"role": "assistant", "content": text}
    if turn.calls:
        answer["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in turn.calls
        ]
    stored = StoredResponse(response=resp, conversation=[*turn.conversation, answer], input_items=turn.items)
    services.responses.insert(owner, stored)


def _usage(turn: _Turn, output_tokens: int) -> ResponseUsage:
    prompt = turn.bridge.gen.prompt_tokens
    return ResponseUsage(input_tokens=prompt, output_tokens=output_tokens, total_tokens=prompt + output_tokens)


def _call_item(call: ParsedCall) -> FunctionCallItem:
    return FunctionCallItem(id=random_id("fc_"), call_id=call.id, name=call.name, arguments=call.arguments)


async def respond(
    body: ResponseCreateRequest, services: Services, owner: str, disconnected: Disconnected | None
) -> ResponseObject | Stream:
    """The response, or with ``stream`` its typed events; an error before any output raises."""
    turn = await asyncio.to_thread(_prepare, body, services, owner)  # database, grammars: off the loop
    (turn.bridge,) = start(services, owner, [turn.generation])
    first = await turn.bridge.first()
    if body.stream:
        return Stream(_sse(turn, first, services, owner))
    got = await collect(turn.bridge, first, 1, disconnected)
    text: str | None = got.texts[0]
    if turn.plan.parse:
        text, calls = parse_calls(got.texts[0])
        turn.calls = calls if turn.plan.parallel else calls[:1]
    output: list[OutputMessage | FunctionCallItem] = []
    if text or not turn.calls:
        status = ItemStatus.INCOMPLETE if got.finish[0] == "length" else ItemStatus.COMPLETED
        output.append(output_message(text or "", status))
    output += [_call_item(c) for c in turn.calls]
    resp = _finish(turn, output, got.finish[0], _usage(turn, got.completion_tokens))
    await asyncio.to_thread(_store, services, owner, turn, resp, text)
    return resp


# --- streaming -----------------------------------------------------------------------------------


class _Events:
    """Numbers and formats the typed events; tracks the output items as they open and close."""

    def __init__(self) -> None:
        self.seq = 0
        self.output: list[OutputMessage | FunctionCallItem] = []
        self.open: OutputMessage | None = None

    def event(self, kind: str, **data: Any) -> str:
        payload = {"type": kind, "sequence_number": self.seq, **data}
        self.seq += 1
        return f"event: {kind}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n"

    def text(self, delta: str) -> Iterator[str]:
        if self.open is None:
            self.open = output_message("", ItemStatus.IN_PROGRESS)
            self.output.append(self.open)
            index = len(self.output) - 1
            yield self.event("response.output_item.added", output_index=index, item=_dump(self.open))
            yield self.event(
                "response.content_part.added",
                item_id=self.open.id,
                output_index=index,
                content_index=0,
                part=_dump(OutputText(text="")),
            )
        index = self.output.index(self.open)
        self.open.content[0].text += delta
        yield self.event(
            "response.output_text.delta",
            item_id=self.open.id,
            output_index=index,
            content_index=0,
            delta=delta,
            logprobs=[],
        )

    def close_text(self, status: ItemStatus) -> Iterator[str]:
        if self.open is None:
            return
        item, index = self.open, self.output.index(self.open)
        part = item.content[0]
        ids = {"item_id": item.id, "output_index": index, "content_index": 0}
        yield self.event("response.output_text.done", **ids, text=part.text, logprobs=[])
        yield self.event("response.content_part.done", **ids, part=_dump(part))
        item.status = status
        yield self.event("response.output_item.done", output_index=index, item=_dump(item))
        self.open = None

    def call(self, call: ParsedCall) -> Iterator[str]:
        yield from self.close_text(ItemStatus.COMPLETED)
        item = _call_item(call)
        self.output.append(item)
        index = len(self.output) - 1
        yield self.event(
            "response.output_item.added",
            output_index=index,
            item=_dump(item.model_copy(update={"arguments": "", "status": ItemStatus.IN_PROGRESS})),
        )
        ids = {"item_id": item.id, "output_index": index}
        yield self.event("response.function_call_arguments.delta", **ids, delta=call.arguments)
        yield self.event("response.function_call_arguments.done", **ids, name=call.name, arguments=call.arguments)
        yield self.event("response.output_item.done", output_index=index, item=_dump(item))


def _dump(obj: Any) -> dict[str, Any]:
    return obj.model_dump(mode="json")  # type: ignore[no-any-return]


async def _sse(turn: _Turn, first: Event, services: Services, owner: str) -> AsyncIterator[str]:
    ev = _Events()
    stream = ToolStream() if turn.plan.parse else None
    started = _dump(turn.template)
    yield ev.event("response.created", response=started)
    yield ev.event("response.in_progress", response=started)
    last = first
    try:
        try:
            async for event in events(turn.bridge, first, 1):
                last = event
                calls: list[ParsedCall] = []
                if stream is None:
                    content = event.text
                else:
                    content, calls = stream.feed(event.text, final=bool(event.finish_reason))
                if content:
                    for line in ev.text(content):
                        yield line
                for call in calls:
                    if turn.calls and not turn.plan.parallel:
                        break
                    turn.calls.append(call)
                    for line in ev.call(call):
                        yield line
        except Exception as e:
            err = as_error(e)
            error = {"code": "server_error", "message": err.message}
            failed = turn.template.model_copy(update={"status": ResponseStatus.FAILED, "error": error})
            yield ev.event("error", code=err.code, message=err.message, param=err.param)
            yield ev.event("response.failed", response=_dump(failed))
            return
        event = last
        finish = event.finish_reason or "stop"
        if not ev.output:
            for line in ev.text(""):
                yield line
        for line in ev.close_text(ItemStatus.INCOMPLETE if finish == "length" else ItemStatus.COMPLETED):
            yield line
        resp = _finish(turn, ev.output, finish, _usage(turn, event.completion_tokens))
        text = "".join(item.content[0].text for item in ev.output if isinstance(item, OutputMessage))
        await asyncio.to_thread(_store, services, owner, turn, resp, text if stream is None or text else None)
        done = f"response.{resp.status}"  # response.completed or response.incomplete
        yield ev.event(done, response=_dump(resp))
    finally:
        turn.bridge.gen.cancel.set()
