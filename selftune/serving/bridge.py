"""From the engine's thread to the event loop: run a ``Generation`` and await its events.

Everything that generates (chat, completions, responses, and the batch runner through them) starts
one ``Bridge`` per prompt, waits for the first event before answering (so errors found before any
output, an unknown adapter or a prompt longer than the context, still get a proper HTTP status
instead of a broken stream), then either collects the choices (``collect``) or streams them
(a ``Stream`` of Server-Sent Events, which the route sends as it is).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import Future
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from selftune.errors import SelftuneError, Unavailable, internal_error
from selftune.inference.engine import Engine
from selftune.inference.generation import Event, Generation
from selftune.schemas.chat import CompletionUsage
from selftune.services import Services
from selftune.serving.admission import Ticket

log = logging.getLogger("selftune.serving")

DISCONNECT_POLL_S = 0.5

Disconnected = Callable[[], Awaitable[bool]]
"""``Request.is_disconnected``: polled while collecting, so a client that leaves cancels its work."""


def start(services: Services, owner: str, generations: Sequence[dict[str, Any]]) -> list[Bridge]:
    """Admit ``generations`` (one per prompt, as ``Generation``'s fields) for ``owner``, then start
    each on the engine; a request the server cannot take on now raises before any starts."""
    choices = sum(int(g.get("n", 1)) for g in generations)
    max_tokens = max(g["params"].max_tokens for g in generations)
    ticket = services.admission.admit(owner, choices, max_tokens, parts=len(generations))
    return [Bridge(services.engine, ticket, **g) for g in generations]


class Bridge:
    """Runs one ``Generation`` on the engine and carries its events (or its exception) onto the loop."""

    def __init__(self, engine: Engine, ticket: Ticket | None, **generation: Any) -> None:
        """``ticket``: what admission took on for it (None: work the server did not admit, a
        reinforcement job's judge in its trainer)."""
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Event | BaseException] = asyncio.Queue()
        self.ticket = ticket
        self.gen = Generation(emit=self._emit, **generation)
        engine.submit(self.gen).add_done_callback(self._done)

    def _emit(self, item: Event | BaseException) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is gone (server shutting down): stop generating
            self.gen.cancel.set()

    def _done(self, future: Future[None]) -> None:
        if self.ticket is not None:
            self.ticket.done()  # its choices and tokens are free for others again
        if future.cancelled():
            self._emit(Unavailable("the server is shutting down; try again"))
        elif (exc := future.exception()) is not None:
            self._emit(exc)

    async def next(self) -> Event:
        item = await self.queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    async def first(self) -> Event:
        """The first event; on an error the generation is cancelled and the error raised."""
        try:
            return await self.next()
        except BaseException:
            self.gen.cancel.set()
            raise

    async def next_or_disconnect(self, disconnected: Disconnected | None) -> Event:
        """The next event, but give up (and cancel) if the client has gone away."""
        if disconnected is None:
            return await self.next()
        while True:
            with suppress(TimeoutError):
                return await asyncio.wait_for(self.next(), DISCONNECT_POLL_S)
            if await disconnected():
                self.gen.cancel.set()
                raise asyncio.CancelledError


@dataclass(frozen=True)
class Stream:
    """A streamed answer: its Server-Sent Events, each ``data: ...`` text ready to send."""

    events: AsyncIterator[str]


@dataclass
class Collected:
    """Every choice of a finished generation."""

    texts: list[str]
    finish: list[str]
    completion_tokens: int
    prompt_tokens: int


def sse_error(e: Exception) -> str:
    """An error after the stream began: the status line is gone, and the SDKs raise on a data event
    holding "error"."""
    return f"data: {json.dumps({'error': as_error(e).to_dict()})}\n\n"


def as_error(e: Exception) -> SelftuneError:
    """``e`` as the client may see it: ours as it is, anything else as an id into the log."""
    return e if isinstance(e, SelftuneError) else internal_error(e, log, "generation failed")


def usage(prompt_tokens: int, completion_tokens: int) -> CompletionUsage:
    return CompletionUsage(
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, total_tokens=prompt_tokens + completion_tokens
    )


async def events(
    bridge: Bridge, first: Event, n: int, disconnected: Disconnected | None = None
) -> AsyncIterator[Event]:
    """Every event from ``first`` on, until all ``n`` choices have finished; an engine error raises."""
    event, done = first, 0
    while True:
        yield event
        if event.finish_reason:
            done += 1
            if done == n:
                return
        event = await bridge.next_or_disconnect(disconnected)


async def collect(bridge: Bridge, first: Event, n: int, disconnected: Disconnected | None) -> Collected:
    texts, finish, tokens = [""] * n, ["stop"] * n, 0
    try:
        async for event in events(bridge, first, n, disconnected):
            texts[event.index] += event.text
            if event.finish_reason:
                finish[event.index] = event.finish_reason
                tokens += event.completion_tokens
    finally:
        bridge.gen.cancel.set()
    return Collected(texts, finish, tokens, bridge.gen.prompt_tokens)
