"""Admission control: how much generation the server takes on at once, per owner and in total.

Every request that generates (chat, completions, responses, and each batch line through them) is
admitted before its generations reach an engine, for its *choices* (prompts x ``n``) and its
*tokens* (choices x ``max_tokens``, the decode work it may ask for). Beyond the bounds:

- a request that could never fit (more choices than ``SELFTUNE_MAX_CHOICES_PER_REQUEST``) is a 400
  that says how many it may have;
- a request that does not fit *now* (the server's or, with API keys, its owner's generations or
  tokens in flight are at their bound) is a 429 with ``Retry-After``, which the SDKs retry: never an
  unbounded queue in the engines, whatever a client sends.

A ``Ticket`` holds what was admitted until the last of its generations has ended (finished,
cancelled, or failed), then gives it back.

**Interactive first.** Work that nobody waits on as it runs (a batch's lines: ``BACKGROUND`` is set
in the batch runner's task) yields to requests someone waits on: before each line starts, the
runner awaits ``yield_to_interactive``, which returns once no interactive request has been
generating for ``QUIET_S``, or after ``SELFTUNE_BATCH_YIELD_SECONDS`` at the latest (so a batch
still moves under a steady stream of chat). On a CPU a batch line's prompt, processed beside a chat
request, slows every token of that request.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from contextvars import ContextVar
from dataclasses import dataclass, field

from selftune.config import Settings
from selftune.errors import InvalidRequest, RateLimited

BACKGROUND: ContextVar[bool] = ContextVar("selftune_background", default=False)
"""True in the tasks of work nobody waits on as it runs (the batch runner's lines)."""

QUIET_S = 0.5
"""How long no interactive request must have been generating before a batch line starts."""

RETRY_AFTER_S = 2.0
"""What a 429 suggests: about one short answer's time on a CPU; the SDKs back off further on their own."""


@dataclass
class Ticket:
    admission: Admission
    owner: str
    choices: int
    tokens: int
    parts: int = 1
    """Generations still running under this ticket; the last one to end gives it back."""
    background: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def done(self) -> None:
        with self._lock:
            self.parts -= 1
            last = self.parts == 0
        if last:
            self.admission.release(self)


class Admission:
    def __init__(self, settings: Settings) -> None:
        self.per_request = settings.max_choices_per_request
        self.total_choices = settings.max_generations
        self.total_tokens = settings.max_tokens_in_flight
        owners = bool(settings.keys)  # with one owner (local mode), the server's bounds are the owner's
        self.owner_choices = settings.max_generations_per_owner if owners else self.total_choices
        self.owner_tokens = settings.max_tokens_in_flight_per_owner if owners else self.total_tokens
        self.yield_s = settings.batch_yield_seconds
        self._lock = threading.Lock()
        self._choices: Counter[str] = Counter()
        self._tokens: Counter[str] = Counter()
        self._interactive = 0
        self._quiet_since = 0.0

    def admit(self, owner: str, choices: int, max_tokens: int, parts: int = 1) -> Ticket:
        """Take on ``choices`` generations of up to ``max_tokens`` each, or refuse (400 or 429)."""
        if choices > self.per_request:
            raise InvalidRequest(
                f"this request asks for {choices} completions (prompts x n); the server takes at most "
                f"{self.per_request} in one request (SELFTUNE_MAX_CHOICES_PER_REQUEST): send fewer, or split it",
                param="n",
                code="too_many_choices",
            )
        tokens = choices * max_tokens
        with self._lock:
            mine_c, mine_t = self._choices[owner], self._tokens[owner]
            all_c, all_t = sum(self._choices.values()), sum(self._tokens.values())
            if mine_c + choices > self.owner_choices or mine_t + tokens > self.owner_tokens:
                raise RateLimited(
                    f"too many generations in flight for this key ({mine_c} completions, {mine_t:,} tokens of "
                    f"at most {self.owner_choices} and {self.owner_tokens:,}); retry when some have finished",
                    retry_after=RETRY_AFTER_S,
                )
            if all_c + choices > self.total_choices or all_t + tokens > self.total_tokens:
                raise RateLimited(
                    f"the server is busy ({all_c} completions, {all_t:,} tokens in flight, of at most "
                    f"{self.total_choices} and {self.total_tokens:,}); retry shortly",
                    retry_after=RETRY_AFTER_S,
                )
            self._choices[owner] += choices
            self._tokens[owner] += tokens
            background = BACKGROUND.get()
            if not background:
                self._interactive += 1
        return Ticket(self, owner, choices, tokens, parts, background)

    def release(self, ticket: Ticket) -> None:
        with self._lock:
            self._choices[ticket.owner] -= ticket.choices
            self._tokens[ticket.owner] -= ticket.tokens
            if self._choices[ticket.owner] <= 0:
                del self._choices[ticket.owner]
                self._tokens.pop(ticket.owner, None)
            if not ticket.background:
                self._interactive -= 1
                self._quiet_since = time.monotonic()

    async def yield_to_interactive(self) -> None:
        """Return once no interactive request has been generating for ``QUIET_S``, or after
        ``SELFTUNE_BATCH_YIELD_SECONDS`` (0: at once)."""
        deadline = time.monotonic() + self.yield_s
        while time.monotonic() < deadline:
            with self._lock:
                quiet = self._interactive == 0 and time.monotonic() - self._quiet_since >= QUIET_S
            if quiet:
                return
            await asyncio.sleep(0.05)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"choices_in_flight": sum(self._choices.values()), "tokens_in_flight": sum(self._tokens.values())}
