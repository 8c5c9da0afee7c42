"""The engine interface: what serves generations, whichever library runs the model.

Three classes implement it: ``torch_engine.TorchEngine`` (transformers + peft, batched),
``llamacpp.LlamaCppEngine`` (llama.cpp's own server loop), and ``router.Router``, which passes each
call to the engine that serves the request's base model and is what the server holds. A caller
submits a ``Generation`` and receives its ``Event``s through the generation's ``emit`` callback; the
returned future ends when its last choice has finished (or raises why it could not run).

This module imports no model library, so the server's types and the CLI can name an engine cheaply.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any, Protocol

from selftune.catalog import BaseModelSpec
from selftune.inference.generation import Generation


class Engine(Protocol):
    def preload(self, spec: BaseModelSpec) -> Future[Any]:
        """Load a base model now (converting it first if needed), so its first request does not wait."""
        ...

    def submit(self, gen: Generation) -> Future[None]:
        """Queue a generation; a generation whose ``cancel`` is set stops at its next token."""
        ...

    def stats(self) -> dict[str, Any]:
        """Counters for ``/health``: loaded models and adapters, generations queued and running."""
        ...

    def close(self) -> None:
        """Stop: queued generations are cancelled, loaded models freed."""
        ...
