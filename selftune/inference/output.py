"""One choice's answer as its tokens arrive, the same on every engine.

An engine decides the next token (PyTorch samples it, llama.cpp reports it); ``ChoiceOutput``
turns tokens into what the client receives: text detokenized incrementally, OpenAI-style
``stop`` strings cut from the output, text that could still be the start of a stop string held
back, ``max_tokens`` counted, and ``Event``s emitted. So both engines stop, count and stream
exactly alike. ``token_budget`` is the one rule for ``max_tokens`` against the model's context.
"""

from __future__ import annotations

from typing import Any

from selftune.errors import InvalidRequest
from selftune.inference.detokenize import IncrementalDecoder
from selftune.inference.generation import Event, Generation


def token_budget(gen: Generation, prompt_tokens: int, context: int) -> int:
    """Completion tokens a choice may have. An explicit ``max_tokens`` that does not fit the context
    is a 400, as on OpenAI; without one the answer may run up to the default, within the context."""
    params = gen.params
    room = context - prompt_tokens
    asked = params.max_tokens if params.explicit_max_tokens else min(params.max_tokens, room)
    if room <= 0 or prompt_tokens + asked > context:
        detail = f" and {asked} in the completion" if params.explicit_max_tokens else ""
        raise InvalidRequest(
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{prompt_tokens + asked} tokens ({prompt_tokens} in the messages{detail}). "
            "Please reduce the length of the messages or the completion.",
            param="messages" if room <= 0 or not params.explicit_max_tokens else "max_tokens",
            code="context_length_exceeded",
        )
    return asked


class ChoiceOutput:
    """Text, stop strings and events of choice ``index`` of ``gen``."""

    def __init__(self, gen: Generation, index: int, tokenizer: Any, max_tokens: int) -> None:
        self.gen = gen
        self.index = index
        self.max_tokens = max_tokens
        self.decoder = IncrementalDecoder(tokenizer)
        self.stops = gen.params.stop
        self.holdback = max((len(s) for s in self.stops), default=1) - 1
        """Characters kept back: the longest stop string but one could still be completing."""
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0
        """Characters of ``text`` already emitted."""
        self.finished: str | None = None
        self.cut = False
        """A stop string ended the text (nothing is held back any more)."""

    def push(self, token: int) -> str | None:
        """Add a generated token (never a stop token); the finish reason if it ends the choice."""
        self.ids.append(token)
        piece = self.decoder.push(token)
        if piece:
            # A stop string not found yet must end in the new piece, so only its tail is searched.
            start = max(0, len(self.text) - self.holdback)
            self.text += piece
            cut = _find_stop(self.text, self.stops, start)
            if cut is not None:
                self.text, self.cut = self.text[:cut], True
                return "stop"
        if len(self.ids) >= self.max_tokens:
            return "length"
        # Hold back what could still be the start of a stop string.
        safe = len(self.text) - self.holdback
        if safe > self.sent:
            self.gen.emit(Event(self.index, self.text[self.sent : safe]))
            self.sent = safe
        return None

    def finish(self, reason: str) -> None:
        """End the choice: flush held text (unless a stop string cut it) and send the last event."""
        if not self.cut:
            self.text += self.decoder.flush()  # an unfinished character at the very end
            at = _find_stop(self.text, self.stops, max(0, self.sent - self.holdback))
            if at is not None:
                self.text, reason = self.text[:at], "stop"
        self.finished = reason
        final = Event(
            self.index, self.text[self.sent :], finish_reason=reason, completion_tokens=len(self.ids), tokens=self.ids
        )
        self.gen.emit(final)


def _find_stop(text: str, stops: tuple[str, ...], start: int = 0) -> int | None:
    hits = [i for i in (text.find(s, start) for s in stops if s) if i >= 0]
    return min(hits) if hits else None
