"""The llama.cpp engine: base models served from their GGUF by llama.cpp's own server loop.

``xllamacpp`` (a prebuilt wheel, pinned exactly) runs llama.cpp's server in-process: continuous
batching across requests, quantised kernels, and LoRA adapters applied per request, unmerged, on
the shared base. It is several times faster than the PyTorch engine on a CPU (BENCHMARKS.md).

What stays ours, so both engines answer alike: the prompt is rendered and tokenized by
``selftune.data.render`` (the same ids training saw) and sent as token ids; llama.cpp reports each
generated token's id (``logprobs: 1``), and ``inference.output.ChoiceOutput`` detokenizes, cuts
``stop`` strings and counts ``max_tokens`` exactly as for PyTorch. Sampling is plain temperature
and top-p (llama.cpp's top-k and min-p are turned off). Grammars for tool calls and
``response_format`` go to llama.cpp's built-in llguidance; a lazy calls grammar (``tool_choice:
auto``) becomes one eager grammar, "free text not opening with ``<``, or tool calls", since
llama.cpp applies llguidance grammars from the first token. The closing policy of
``inference.constrain`` (the last ``reserve`` tokens of a constrained answer take the allowed
token that closes most) needs no model, so llama.cpp writes all but those tokens and, if the
structure is still open then, this engine closes it with the same policy the PyTorch engine uses.

Adapters: llama.cpp loads LoRA files only when a server is built, so each base model has one
current server holding the adapters in use (at most ``max_adapters``, most recent first). A
request for an adapter it lacks builds a new server with it (a second or so; the weights are
memory-mapped) and new requests go there, while requests in flight finish on the old one, which
is dropped when its last one ends. Every request lists every loaded adapter with its scale (1 for
its own, 0 for the rest), so an adapter a request does not name is never applied.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from selftune.catalog import BaseModelSpec, Catalog, Resolved
from selftune.convert.lora import convert_adapter, gguf_path
from selftune.data.render import generation_config, render_prompt, stop_token_ids
from selftune.errors import InvalidRequest, NotFound, SelftuneError
from selftune.inference.constrain import RowConstraint, Vocabulary
from selftune.inference.generation import Generation
from selftune.inference.loading import check_adapter
from selftune.inference.output import ChoiceOutput, token_budget

log = logging.getLogger("selftune.engine")

SLACK = 8
"""Tokens llama.cpp may decode past an answer's budget (see ``_generate``)."""

LLGUIDANCE = "%llguidance {}\n"
"""llama.cpp hands a grammar starting with this line to llguidance (Lark syntax) instead of GBNF."""


def eager_calls(lazy: str) -> str:
    """A lazy calls grammar as one grammar from the first token: free text that does not open
    with ``<``, or the calls (so a call the model starts still ends as valid JSON)."""
    return 'start: free | calls\nfree: /[^<](?s:.*)/ | ""\n' + lazy.replace("start:", "calls:", 1)


@dataclass(eq=False)
class _Server:
    """One llama.cpp server on a base model's GGUF, with ``adapters`` (GGUF paths) as LoRA ids 0..n-1."""

    handle: Any
    adapters: list[str]
    users: int = 0
    retired: bool = False


@dataclass(eq=False)
class _Base:
    """A base model served by llama.cpp: tokenizer and stop tokens (ours), context, and its server."""

    spec: BaseModelSpec
    gguf: Path
    folder: Path
    tokenizer: Any
    stop_ids: set[int]
    context: int
    vocab_size: int
    server: _Server
    used: OrderedDict[str, None] = field(default_factory=OrderedDict)
    """Adapter GGUF paths by last use, oldest first."""
    vocabulary: Vocabulary | None = None
    special_ids: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


class LlamaCppEngine:
    def __init__(self, catalog: Catalog, *, max_batch: int = 8, max_adapters: int = 8, threads: int = 0) -> None:
        import xllamacpp

        self._x = xllamacpp
        self.catalog = catalog
        self.max_batch = max(1, max_batch)
        self.max_adapters = max(1, max_adapters)
        self.threads = threads or os.cpu_count() or 2
        self._bases: dict[str, _Base] = {}
        self._lock = threading.Lock()
        # One base loads at a time: the first requests for a model not yet loaded arrive together, and
        # each would otherwise build its own llama.cpp server on the same GGUF, all but one then dropped.
        self._loading = threading.Lock()
        # handle_completions blocks its thread for a whole answer; llama.cpp's own loop does the work.
        self._pool = ThreadPoolExecutor(max_workers=4 * self.max_batch + 4, thread_name_prefix="selftune-llamacpp")
        self._closed = False
        self.active = 0
        self.servers_built = 0

    def serves(self, spec: BaseModelSpec) -> bool:
        """llama.cpp serves base models that come as a GGUF file or were converted to one."""
        return self.catalog.gguf(spec) is not None

    # --- public API, as ``inference.engine.Engine`` -----------------------------------------------

    def preload(self, spec: BaseModelSpec) -> Future[Any]:
        return self._pool.submit(self._base, spec)

    def submit(self, gen: Generation) -> Future[None]:
        future: Future[None] = Future()
        if self._closed:
            future.cancel()
            return future
        with self._lock:
            self.active += 1
        self._pool.submit(self._generate, gen, future)
        return future

    def stats(self) -> dict[str, Any]:
        return {
            "threads": self.threads,
            "max_batch": self.max_batch,
            "loaded_models": list(self._bases),
            "loaded_adapters": sum(len(b.server.adapters) for b in self._bases.values()),
            "servers_built": self.servers_built,
            "active_generations": self.active,
        }

    def close(self) -> None:
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            bases, self._bases = list(self._bases.values()), {}
        for base in bases:
            base.server.handle = None  # the destructor stops llama.cpp's loop

    # --- loading ----------------------------------------------------------------------------------

    def _base(self, spec: BaseModelSpec) -> _Base:
        with self._lock:
            if spec.name in self._bases:
                return self._bases[spec.name]
        with self._loading:
            with self._lock:
                if spec.name in self._bases:  # loaded while this request waited
                    return self._bases[spec.name]
            return self._load(spec)

    def _load(self, spec: BaseModelSpec) -> _Base:
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
        base = _Base(spec, gguf, folder, tokenizer, stop_ids, context, vocab_size, server)
        base.special_ids = set(tokenizer.all_special_ids) - stop_ids
        log.info("llama.cpp serves %s from %s (%.2fs)", spec.name, gguf, time.perf_counter() - t0)
        with self._lock:
            self._bases[spec.name] = base
        return base

    def _build(self, gguf: Path, context: int, adapters: list[str]) -> _Server:
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
        server = _Server(x.Server(p), adapters)
        self.servers_built += 1
        log.info(
            "llama.cpp server on %s with %d adapter(s) in %.2fs", gguf.name, len(adapters), time.perf_counter() - t0
        )
        return server

    def _lease(self, base: _Base, model: Resolved) -> tuple[_Server, int | None]:
        """The server to run on and the LoRA id of ``model``'s adapter (None for the base model)."""
        adapter = self._adapter_gguf(base, model) if model.adapter is not None else None
        with base.lock:
            if adapter is not None:
                base.used[adapter] = None
                base.used.move_to_end(adapter)
                if adapter not in base.server.adapters:
                    keep = list(reversed(base.used))[: self.max_adapters]
                    for old in [a for a in base.used if a not in keep]:
                        del base.used[old]
                    old_server, base.server = base.server, self._build(base.gguf, base.context, sorted(keep))
                    old_server.retired = True
                    if old_server.users == 0:
                        old_server.handle = None
            server = base.server
            server.users += 1
            return server, (server.adapters.index(adapter) if adapter is not None else None)

    @staticmethod
    def _release(base: _Base, server: _Server) -> None:
        with base.lock:
            server.users -= 1
            if server.retired and server.users == 0:
                server.handle = None  # the last request on a replaced server is done

    def _adapter_gguf(self, base: _Base, model: Resolved) -> str:
        """The adapter as a GGUF LoRA, converted now if the job ran before selftune wrote one."""
        assert model.adapter is not None
        target = gguf_path(model.adapter)
        if not target.is_file():
            check_adapter(model)
            convert_adapter(model.adapter, base.folder)
        return str(target)

    # --- generation -------------------------------------------------------------------------------

    def _generate(self, gen: Generation, future: Future[None]) -> None:
        """Run every choice of ``gen`` (one llama.cpp request each, in parallel) and end ``future``."""
        try:
            base = self._base(gen.model.base)
            server, lora = self._lease(base, gen.model)
        except BaseException as e:
            self._finish(future, e)
            return
        try:
            prompt = gen.prompt_ids or render_prompt(base.tokenizer, gen.messages, gen.tools)
            gen.prompt_tokens = len(prompt)
            budget = token_budget(gen, len(prompt), base.context)
            reserve = self._vocabulary(base).reserve(gen.grammar, budget) if gen.grammar is not None else 0
            # llama.cpp reports a token's id with its text, and a token that ends in unfinished UTF-8
            # has none yet: at its own max_tokens such ids are never sent. So it may run a few tokens
            # past ours, and ChoiceOutput ends the answer at exactly the budget.
            slack = min(SLACK, base.context - len(prompt) - budget)
            request = self._request(server, lora, gen, prompt, budget - reserve + slack, base.stop_ids)
            outs = [ChoiceOutput(gen, i, base.tokenizer, budget) for i in range(gen.n)]
            seeds = [None if gen.params.seed is None else gen.params.seed + i for i in range(gen.n)]
            errors: list[BaseException | None] = [None] * gen.n

            def run(i: int) -> None:
                errors[i] = self._choice(server, base, request, outs[i], seeds[i], budget - reserve)

            if gen.params.seed is not None:
                # Choices decoded side by side share batches in an order that varies from run to run,
                # which changes their numerics; with a seed, one after another repeats exactly.
                for i in range(gen.n):
                    run(i)
            else:
                # Choices beyond the first on threads of their own (pool threads waiting on pool tasks could deadlock).
                others = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(1, gen.n)]
                for t in others:
                    t.start()
                run(0)
                for t in others:
                    t.join()
            self._finish(future, next((e for e in errors if e is not None), None))
        except BaseException as e:
            gen.cancel.set()
            self._finish(future, e)
        finally:
            self._release(base, server)

    def _finish(self, future: Future[None], error: BaseException | None) -> None:
        with self._lock:
            self.active -= 1
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)

    @staticmethod
    def _request(
        server: _Server, lora: int | None, gen: Generation, prompt: list[int], max_tokens: int, stop_ids: set[int]
    ) -> dict[str, Any]:
        params = gen.params
        request: dict[str, Any] = {
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": 0,
            "min_p": 0.0,
            "stream": True,
            "logprobs": 1,  # each chunk then names its token ids, which ChoiceOutput needs
            "lora": [{"id": i, "scale": 1.0 if i == lora else 0.0} for i in range(len(server.adapters))],
        }
        grammar = gen.grammar or (eager_calls(gen.lazy_grammar) if gen.lazy_grammar else None)
        if grammar is not None:
            # llama.cpp's llguidance ends a grammar on its own end-of-text token, which need not be the
            # model's end of turn (SmolLM2: <|endoftext|>, not <|im_end|>); a model trained to end its
            # turn would be pushed on instead. So the grammar ends on the model's stop tokens itself.
            end = " | ".join(f"<[{i}]>" for i in sorted(stop_ids))
            request["grammar"] = f"{LLGUIDANCE}start: answer ({end})\n" + grammar.replace("start:", "answer:", 1)
        return request

    def _vocabulary(self, base: _Base) -> Vocabulary:
        if base.vocabulary is None:
            base.vocabulary = Vocabulary.build(base.tokenizer, base.stop_ids, base.vocab_size)
        return base.vocabulary

    def _choice(
        self, server: _Server, base: _Base, request: dict[str, Any], out: ChoiceOutput, seed: int | None, free: int
    ) -> BaseException | None:
        """One choice, streamed token by token into ``out``; returns what went wrong, if anything."""
        gen = out.gen
        failure: list[BaseException] = []

        special = base.special_ids
        closing: list[bool] = []
        pending: list[int] = []
        """A special token held back: llama.cpp may end the turn on it (its end-of-generation set can be
        wider than the model's configured stop tokens: grammars end on ``<|endoftext|>``, say)."""

        def on_chunk(chunk: dict[str, Any]) -> bool:  # True stops llama.cpp (and frees its slot)
            if "choices" not in chunk:
                failure.append(_error(chunk))
                return True
            for choice in chunk["choices"]:
                for entry in (choice.get("logprobs") or {}).get("content") or []:
                    token = int(entry["id"])
                    finish = "stop" if token in base.stop_ids else None
                    if finish is None and pending:
                        finish = out.push(pending.pop())
                    if finish is None and token in special:
                        pending.append(token)
                    elif finish is None:
                        finish = out.push(token)
                    if finish is not None:
                        out.finish(finish)
                        return True
                    if gen.grammar is not None and len(out.ids) >= free:
                        closing.append(True)  # llama.cpp's share is written; the reserve closes the structure
                        return True
                if choice.get("finish_reason"):
                    if pending and choice["finish_reason"] == "length":
                        out.push(pending.pop())
                    if choice["finish_reason"] == "length" and gen.grammar is not None:
                        closing.append(True)  # llama.cpp's share is written; the reserve closes the structure
                    else:
                        out.finish("length" if choice["finish_reason"] == "length" else "stop")
                    return True
            return gen.cancel.is_set()

        if gen.cancel.is_set():
            return None
        if free > 0:
            server.handle.handle_completions(request if seed is None else {**request, "seed": seed}, on_chunk)
        else:  # the whole answer is the closing reserve
            closing.append(True)
        if failure:
            return failure[0]
        if closing:
            self._close(base, out)
        if out.finished is None and not gen.cancel.is_set():
            return SelftuneError("llama.cpp ended the answer without finishing it")
        return None

    def _close(self, base: _Base, out: ChoiceOutput) -> None:
        """Finish a constrained answer within its last tokens: the allowed token that closes most, each
        step (``constrain.Vocabulary.closing``), as the PyTorch engine does in its closing phase."""
        assert out.gen.grammar is not None
        vocab = self._vocabulary(base)
        constraint = RowConstraint(vocab, out.gen.grammar, reserve=out.max_tokens)
        if not constraint.follow(out.ids):  # cannot happen when llama.cpp kept to the grammar
            out.finish("length")
            return
        while out.finished is None:
            scores, _ = constraint.mask(torch.zeros(vocab.size), remaining=0)
            token = int(torch.argmax(scores))
            if token in base.stop_ids:
                out.finish("stop")
                break
            constraint.advance(token)
            finish = out.push(token)
            if finish != "stop" and constraint.finished:
                finish = "stop"
            if finish is not None:
                out.finish(finish)


def _error(chunk: dict[str, Any]) -> SelftuneError:
    """llama.cpp's error body as ours: its 400s stay 400s."""
    err = chunk.get("error", chunk)
    message = str(err.get("message") or err)
    if int(err.get("code") or 500) == 400:
        return InvalidRequest(f"llama.cpp refused the request: {message}")
    return SelftuneError(f"llama.cpp failed: {message}")
