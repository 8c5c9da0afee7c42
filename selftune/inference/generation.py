"""What a caller submits to the engine (``Generation`` with ``SamplingParams``) and what it gets back (``Event``s)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from selftune.catalog import Resolved
from selftune.data.render import Prompt


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    explicit_max_tokens: bool = True
    """The client set ``max_tokens``: beyond the context it is a 400, not shortened (``output.token_budget``)."""

    @classmethod
    def requested(
        cls,
        max_tokens: int | None,
        default_max_tokens: int,
        temperature: float | None,
        top_p: float | None,
        stop: tuple[str, ...] = (),
        seed: int | None = None,
    ) -> SamplingParams:
        """A request's values, OpenAI's defaults where it sent none (temperature and top-p 1)."""
        return cls(
            max_tokens=max_tokens or default_max_tokens,
            explicit_max_tokens=max_tokens is not None,
            temperature=1.0 if temperature is None else temperature,
            top_p=1.0 if top_p is None else top_p,
            stop=stop,
            seed=seed,
        )


@dataclass(frozen=True)
class Event:
    """A piece of output. The last event of each choice has ``finish_reason`` set."""

    index: int
    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0
    tokens: list[int] | None = None
    """On the last event: the choice's token ids (without the stop token)."""


@dataclass
class Generation:
    """One request: ``n`` completions of ``messages`` with ``params``, reported through ``emit``."""

    model: Resolved
    messages: Prompt
    """Chat messages, or the plain text of a legacy completion prompt (``selftune.data.render``)."""
    params: SamplingParams
    emit: Callable[[Event], None]
    n: int = 1
    cancel: threading.Event = field(default_factory=threading.Event)
    prompt_tokens: int = 0
    tools: list[dict[str, Any]] | None = None
    """Rendered into the prompt as training renders them (``selftune.data.render``)."""
    grammar: str | None = None
    """Constrain every choice to this llguidance grammar (``selftune.inference.constrain``)."""
    lazy_grammar: str | None = None
    """Constrain a choice to this grammar only once its text opens with a tool call."""
    prompt_ids: list[int] | None = None
    """A prompt already tokenized, used as it is instead of rendering ``messages``."""
