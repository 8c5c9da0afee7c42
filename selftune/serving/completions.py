"""Legacy text completions, for base models and prompt-style fine-tunes (the route is ``server.completions``).

The prompt is plain text (or token ids), fed to the model without its chat template, exactly as
``prompt``/``completion`` training lines are rendered (``selftune.data.render.render_text``), so a
model fine-tuned on such lines answers here as it learned. A list of prompts gets ``n`` choices
each, indexed prompt by prompt (choice ``i * n + j`` is the ``j``-th of prompt ``i``), as OpenAI does.
All prompts are submitted at once and run side by side in the engine's batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

from selftune.errors import InvalidRequest
from selftune.ids import now, random_id
from selftune.inference.generation import Event, SamplingParams
from selftune.permissions import resolve_callable
from selftune.schemas.completions import Completion, CompletionChoice, CompletionRequest
from selftune.services import Services
from selftune.serving.bridge import Bridge, Disconnected, Stream, collect, events, sse_error, start, usage


def _prepare(body: CompletionRequest, services: Services, owner: str) -> list[dict[str, Any]]:
    """One generation's fields per prompt, checked (the prompts, the model, token ids in its vocabulary)."""
    for param, why in body.unsupported():
        raise InvalidRequest(why, param=param, code="unsupported_parameter")
    prompts = body.prompts
    if not prompts or any(len(p) == 0 for p in prompts):
        raise InvalidRequest("prompt must not be empty: send the text (or token ids) to continue.", param="prompt")
    if body.echo and not all(isinstance(p, str) for p in prompts):
        raise InvalidRequest("echo works with text prompts; send the prompt as text", param="echo")
    resolved = resolve_callable(services.catalog, body.model, owner)
    params = SamplingParams.requested(
        body.max_tokens, services.settings.default_max_tokens, body.temperature, body.top_p, body.stop_list, body.seed
    )
    if not all(isinstance(p, str) for p in prompts):
        _check_ids(prompts, len(services.catalog.tokenizer(resolved.base)), body.model)
    generations = []
    for p in prompts:
        text, ids = (p, None) if isinstance(p, str) else ("", p)
        generations.append({"model": resolved, "messages": text, "prompt_ids": ids, "params": params, "n": body.n or 1})
    return generations


def _check_ids(prompts: Sequence[str | list[int]], vocabulary: int, model: str) -> None:
    """Token-id prompts hold ids of the model's vocabulary (a negative or too large one would fail on
    the device, not as the client's mistake)."""
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            continue
        bad = next((t for t in p if not 0 <= t < vocabulary), None)
        if bad is not None:
            raise InvalidRequest(
                f"prompt {i} holds token id {bad}, which is not in {model}'s vocabulary of {vocabulary} tokens "
                f"(ids 0 to {vocabulary - 1})",
                param="prompt",
                code="invalid_token_id",
            )


async def _firsts(bridges: Sequence[Bridge]) -> list[Event]:
    """Each prompt's first event; an error in one cancels them all (the request fails as a whole)."""
    try:
        return [await b.first() for b in bridges]
    except BaseException:
        for b in bridges:
            b.gen.cancel.set()
        raise


def _meta(model: str) -> dict[str, object]:
    return {"id": random_id("cmpl-"), "created": now(), "model": model}


async def complete(
    body: CompletionRequest, services: Services, owner: str, disconnected: Disconnected | None
) -> Completion | Stream:
    """The completion, or with ``stream`` its events; an error before any output raises."""
    generations = await asyncio.to_thread(_prepare, body, services, owner)  # database, tokenizer: off the loop
    bridges = start(services, owner, generations)
    n = bridges[0].gen.n
    echoes = [p if isinstance(p, str) and body.echo else "" for p in body.prompts]
    firsts = await _firsts(bridges)
    if body.stream:
        meta = _meta(bridges[0].gen.model.id)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return Stream(_sse(bridges, firsts, echoes, n, meta, include_usage))
    choices: list[CompletionChoice] = []
    prompt_tokens = completion_tokens = 0
    for i, (bridge, first) in enumerate(zip(bridges, firsts, strict=True)):
        got = await collect(bridge, first, n, disconnected)
        prompt_tokens += got.prompt_tokens
        completion_tokens += got.completion_tokens
        for j in range(n):
            text = echoes[i] + got.texts[j]
            choices.append(CompletionChoice(index=i * n + j, text=text, finish_reason=got.finish[j]))
    model = bridges[0].gen.model.id
    return Completion(choices=choices, usage=usage(prompt_tokens, completion_tokens), **_meta(model))


def _chunk(meta: dict[str, object], index: int, text: str, finish: str | None = None) -> str:
    choice = CompletionChoice(index=index, text=text, finish_reason=finish)
    return f"data: {Completion(choices=[choice], **meta).model_dump_json()}\n\n"


async def _sse(
    bridges: Sequence[Bridge],
    firsts: Sequence[Event],
    echoes: Sequence[str],
    n: int,
    meta: dict[str, object],
    include_usage: bool,
) -> AsyncIterator[str]:
    """Prompt by prompt (they generate side by side; their events wait in each bridge's queue)."""
    tokens = 0
    try:
        for i, bridge in enumerate(bridges):
            if echoes[i]:
                for j in range(n):
                    yield _chunk(meta, i * n + j, echoes[i])
            try:
                async for event in events(bridge, firsts[i], n):
                    yield _chunk(meta, i * n + event.index, event.text, event.finish_reason)
                    tokens += event.completion_tokens if event.finish_reason else 0
            except Exception as e:
                yield sse_error(e)
                return
        if include_usage:
            prompt = sum(b.gen.prompt_tokens for b in bridges)
            yield f"data: {Completion(choices=[], usage=usage(prompt, tokens), **meta).model_dump_json()}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        for bridge in bridges:
            bridge.gen.cancel.set()
