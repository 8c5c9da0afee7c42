"""Which engine serves a request: llama.cpp or PyTorch, chosen per base model by ``SELFTUNE_ENGINE``.

- ``auto`` (default): llama.cpp for base models with a GGUF (the file they came as, or the one
  ``selftune models add`` converted a folder to) when there is no CUDA GPU; PyTorch for the rest.
- ``llamacpp``: llama.cpp only; a model it cannot serve is a 400 that says so.
- ``torch``: the PyTorch engine only (``inference.torch_engine``).

``Router`` is itself an ``inference.engine.Engine``: it passes each call to the engine of the
request's base model. Each engine loads what it needs on first use.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from typing import Any

from selftune.catalog import BaseModelSpec, Catalog
from selftune.config import Settings
from selftune.errors import InvalidRequest
from selftune.inference.engine import Engine
from selftune.inference.generation import Generation
from selftune.inference.llamacpp import LlamaCppEngine
from selftune.inference.torch_engine import TorchEngine

log = logging.getLogger("selftune.engine")

ENGINES = ("auto", "llamacpp", "torch")


class Router:
    def __init__(self, settings: Settings, catalog: Catalog) -> None:
        self.mode = settings.engine
        self.torch = TorchEngine(
            catalog,
            max_loaded=settings.max_loaded_models,
            max_adapters=settings.max_loaded_adapters,
            max_batch=settings.max_batch_size,
            dtype=settings.inference_dtype,
        )
        self.llamacpp: LlamaCppEngine | None = None
        if self.mode == "llamacpp" or (self.mode == "auto" and self.torch.device.type == "cpu"):
            try:
                self.llamacpp = LlamaCppEngine(
                    catalog,
                    max_loaded=settings.max_loaded_models,
                    max_batch=settings.max_batch_size,
                    max_adapters=settings.max_loaded_adapters,
                    threads=settings.inference_threads,
                )
            except ImportError as e:  # no xllamacpp wheel for this platform
                if self.mode == "llamacpp":
                    raise
                log.warning("llama.cpp is not available (%s); serving with PyTorch", e)

    def engine_name(self, spec: BaseModelSpec) -> str:
        if self.llamacpp is not None and self.llamacpp.serves(spec):
            return "llamacpp"
        if self.mode == "llamacpp":
            raise InvalidRequest(
                f"SELFTUNE_ENGINE=llamacpp serves base models with a GGUF file, and {spec.name!r} has none "
                "(its family or tokenizer is not converted); add a GGUF of it with `selftune models add`, "
                "or use SELFTUNE_ENGINE=auto",
                param="model",
            )
        return "torch"

    def _engine(self, spec: BaseModelSpec) -> Engine:
        if self.engine_name(spec) == "llamacpp":
            assert self.llamacpp is not None
            return self.llamacpp
        return self.torch

    def preload(self, spec: BaseModelSpec) -> Future[Any]:
        return self._engine(spec).preload(spec)

    def submit(self, gen: Generation) -> Future[None]:
        try:
            engine = self._engine(gen.model.base)
        except InvalidRequest as e:
            future: Future[None] = Future()
            future.set_exception(e)
            return future
        return engine.submit(gen)

    def stats(self) -> dict[str, Any]:
        """For ``/health``: the mode, which engine serves each loaded model, and both engines' counters."""
        torch_stats = self.torch.stats()
        out: dict[str, Any] = {"engine": self.mode, **torch_stats, "torch": torch_stats}
        served = dict.fromkeys(torch_stats["loaded_models"], "torch")
        if self.llamacpp is not None:
            llama = self.llamacpp.stats()
            out["llamacpp"] = llama
            served.update(dict.fromkeys(llama["loaded_models"], "llamacpp"))
            out["active_generations"] += llama["active_generations"]
        out["loaded_models"] = list(served)
        out["served_by"] = served
        return out

    def close(self) -> None:
        self.torch.close()
        if self.llamacpp is not None:
            self.llamacpp.close()
