"""What a caller submits to the engine (``Generation`` with ``SamplingParams``) and what it gets back (``Event``s)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from selftune.catalog import Resolved


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class Event:
    """A piece of output. The last event of each choice has ``finish_reason`` set."""

    index: int
    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0


@dataclass
class Generation:
    """One request: ``n`` completions of ``messages`` with ``params``, reported through ``emit``."""

    model: Resolved
    messages: Sequence[dict[str, Any]]
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
