"""The llama.cpp servers of each base model: loading a base, building a server with its adapters,
leasing that server to a request, and unloading what is not used.

llama.cpp loads LoRA files only when a server is built, so each base model has one current server
holding the adapters in use (at most ``max_adapters``, most recent first). A request for an adapter
it lacks builds a new server with it (a second or so; the weights are memory-mapped) and new
requests go there, while requests in flight finish on the old one (*retired*), which is dropped when
its last one ends. Bounded: at most ``MAX_RETIRED`` retired servers per base (each holds a KV cache;
another switch is a 429 until one drains), at most ``max_loaded`` bases (the least recently used
idle one is unloaded), and an adapter deleted since it was loaded is left out of the next server
instead of failing its build for every owner's adapters.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from selftune.catalog import BaseModelSpec, Resolved
from selftune.convert.lora import convert_adapter, gguf_path
from selftune.data.render import generation_config, stop_token_ids
from selftune.errors import NotFound, RateLimited
from selftune.inference.constrain import Vocabulary
from selftune.inference.loading import check_adapter

log = logging.getLogger("selftune.engine")

MAX_RETIRED = 2
"""Replaced servers a base may have still finishing requests; another adapter switch waits (429)."""


class ModelFiles(Protocol):
    """Where a base model's files lie on this machine: the server's ``catalog.Catalog``, or the fixed
    set of judge models a reinforcement job's trainer was given (``train.judging``)."""

    def gguf(self, spec: BaseModelSpec) -> Path | None: ...

    def materialize(self, spec: BaseModelSpec) -> Path: ...

    def tokenizer(self, spec: BaseModelSpec) -> Any: ...


@dataclass(eq=False)
class Server:
    """One llama.cpp server on a base model's GGUF, with ``adapters`` (GGUF paths) as LoRA ids 0..n-1."""

    handle: Any
    adapters: list[str]
    users: int = 0
    retired: bool = False


@dataclass(eq=False)
class Base:
    """A base model served by llama.cpp: tokenizer and stop tokens (ours), context, and its server."""

    spec: BaseModelSpec
    gguf: Path
    folder: Path
    tokenizer: Any
    stop_ids: set[int]
    context: int
    vocab_size: int
    server: Server
    used: OrderedDict[str, None] = field(default_factory=OrderedDict)
    """Adapter GGUF paths by last use, oldest first."""
    retired: list[Server] = field(default_factory=list)
    """Servers replaced by a newer one, still finishing requests (each holds a KV cache)."""
    vocabulary: Vocabulary | None = None
    special_ids: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Bases:
    def __init__(
        self, catalog: ModelFiles, *, max_batch: int, max_adapters: int, threads: int, max_loaded: int
    ) -> None:
        import xllamacpp

        self._x = xllamacpp
        self.catalog = catalog
        self.max_batch = max_batch
        self.max_adapters = max(1, max_adapters)
        self.threads = threads or os.cpu_count() or 2
        self.max_loaded = max(1, max_loaded)
        self._bases: OrderedDict[str, Base] = OrderedDict()
        self._lock = threading.Lock()
        # One base loads at a time: the first requests for a model not yet loaded arrive together, and
        # each would otherwise build its own llama.cpp server on the same GGUF, all but one then dropped.
        self._loading = threading.Lock()
        self.servers_built = 0

    def loaded(self) -> list[str]:
        return list(self._bases)

    def loaded_adapters(self) -> int:
        return sum(len(b.server.adapters) for b in list(self._bases.values()))

    def close(self) -> None:
        with self._lock:
            bases, self._bases = list(self._bases.values()), OrderedDict()
        for base in bases:
            base.server.handle = None  # the destructor stops llama.cpp's loop

    def get(self, spec: BaseModelSpec) -> Base:
        """The base model, loaded now if it is not (one at a time)."""
        with self._lock:
            if spec.name in self._bases:
                self._bases.move_to_end(spec.name)
                return self._bases[spec.name]
        with self._loading:
            with self._lock:
                if spec.name in self._bases:  # loaded while this request waited
                    return self._bases[spec.name]
            return self._load(spec)

    def _load(self, spec: BaseModelSpec) -> Base:
        gguf = self.catalog.gguf(spec)
        if gguf is None or not gguf.is_file():
            raise NotFound(f"weights for base model {spec.name!r} are missing: {gguf} does not exist")
        t0 = time.perf_counter()
        folder = self.catalog.materialize(spec)  # the tokenizer and config training uses
        tokenizer = self.catalog.tokenizer(spec)
        config = json.loads((folder / "config.json").read_text())
        stop_ids = stop_token_ids(tokenizer, generation_config(folder))
        context = int(config.get("max_position_embeddings") or 2048)
        vocab_size = int(config.get("vocab_size") or len(tokenizer))
        server = self._build(gguf, context, [])
        base = Base(spec, gguf, folder, tokenizer, stop_ids, context, vocab_size, server)
        base.special_ids = set(tokenizer.all_special_ids) - stop_ids
        log.info("llama.cpp serves %s from %s (%.2fs)", spec.name, gguf, time.perf_counter() - t0)
        with self._lock:
            self._bases[spec.name] = base
            self._unload_idle()
        return base

    def _unload_idle(self) -> None:
        """Beyond ``max_loaded`` bases, drop the least recently used ones nothing runs on (under ``_lock``)."""
        for name in list(self._bases)[:-1]:
            if len(self._bases) <= self.max_loaded:
                return
            base = self._bases[name]
            with base.lock:
                if base.server.users == 0 and not base.retired:
                    del self._bases[name]
                    base.server.handle = None
                    log.info("unloaded %s to make room", name)

    def _build(self, gguf: Path, context: int, adapters: list[str]) -> Server:
        x = self._x
        p = x.CommonParams()
        p.model.path = str(gguf)
        p.n_parallel = self.max_batch
        p.n_ctx = context  # shared by all slots (kv_unified): each request may use the whole context
        p.kv_unified = True
        p.cpuparams.n_threads = self.threads
        p.cpuparams_batch.n_threads = self.threads
        p.warmup = False
        p.verbosity = -1
        p.lora_adapters = [x.CommonAdapterLoraInfo(a, 0.0) for a in adapters]
        p.lora_init_without_apply = True
        t0 = time.perf_counter()
        server = Server(x.Server(p), adapters)
        self.servers_built += 1
        log.info(
            "llama.cpp server on %s with %d adapter(s) in %.2fs", gguf.name, len(adapters), time.perf_counter() - t0
        )
        return server

    def lease(self, base: Base, model: Resolved) -> tuple[Server, int | None]:
        """The server to run on and the LoRA id of ``model``'s adapter (None for the base model)."""
        adapter = self._adapter_gguf(base, model) if model.adapter is not None else None
        with base.lock:
            if adapter is not None:
                base.used[adapter] = None
                base.used.move_to_end(adapter)
                if adapter not in base.server.adapters:
                    if len(base.retired) >= MAX_RETIRED:
                        raise RateLimited(
                            "the server is switching between many fine-tuned models of this base at once; retry "
                            "in a moment",
                            retry_after=1.0,
                        )
                    # An adapter deleted since it was loaded cannot go into a new server: llama.cpp
                    # would refuse the whole build, and every owner's adapters with it.
                    for gone in [a for a in base.used if a != adapter and not Path(a).is_file()]:
                        del base.used[gone]
                    keep = list(reversed(base.used))[: self.max_adapters]
                    for old in [a for a in base.used if a not in keep]:
                        del base.used[old]
                    old_server, base.server = base.server, self._build(base.gguf, base.context, sorted(keep))
                    old_server.retired = True
                    if old_server.users == 0:
                        old_server.handle = None
                    else:
                        base.retired.append(old_server)
            server = base.server
            server.users += 1
            return server, (server.adapters.index(adapter) if adapter is not None else None)

    @staticmethod
    def release(base: Base, server: Server) -> None:
        with base.lock:
            server.users -= 1
            if server.retired and server.users == 0:
                server.handle = None  # the last request on a replaced server is done
                if server in base.retired:
                    base.retired.remove(server)

    def _adapter_gguf(self, base: Base, model: Resolved) -> str:
        """The adapter as a GGUF LoRA, converted now if the job ran before selftune wrote one."""
        assert model.adapter is not None
        target = gguf_path(model.adapter)
        if not target.is_file():
            check_adapter(model)
            convert_adapter(model.adapter, base.folder)
        return str(target)
