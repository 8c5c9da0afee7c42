"""The PyTorch engine: loads base models once and generates from them, off the event loop.

All model work runs on one dedicated thread, which batches: every request in flight on the same
base model advances one token per forward pass (continuous batching, as vLLM does). Decoding one
token reads every weight once whatever the batch size, so on a CPU, where that read is the cost,
eight concurrent requests take little longer per token than one. A request joins the running batch
after its own prompt pass and leaves it when it finishes; the key/value caches are left-padded to
a common length and the padding masked.

Callers ``submit`` a ``Generation`` and receive ``Event``s through its ``emit`` callback, so the
HTTP layer (or anything else) decides how to deliver them. A generation whose ``cancel`` event is
set stops at the next token; one cancelled while still queued never starts.

Fine-tuned models are LoRA adapters on a shared base (``inference.loading``: at most
``max_adapters``, least recently used and idle dropped). Rows of one batch may use different
adapters, or none (peft's ``adapter_names``). Cache and sampling tensor work is in
``inference.batching``, text in ``inference.detokenize``.

The decode loop is written out rather than delegated to ``generate()``: it needs batching across
requests, per-token cancellation, OpenAI-style stop strings that are cut from the output, and a
per-request seeded ``torch.Generator`` that leaves global RNG state alone.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from selftune.catalog import BaseModelSpec, Catalog
from selftune.data.render import TOOL_CALL_OPEN, render_prompt
from selftune.errors import InvalidRequest
from selftune.inference.batching import batchable, cache_width, merge_caches, sample, select_rows
from selftune.inference.constrain import RowConstraint, Vocabulary
from selftune.inference.generation import Generation
from selftune.inference.loading import BASE, Loaded, load_adapter, load_base
from selftune.inference.output import ChoiceOutput, token_budget

log = logging.getLogger("selftune.engine")


@dataclass
class _Request:
    """A submitted generation, its future, and how many of its ``n`` choices are still running."""

    gen: Generation
    future: Future[None]
    running: int = 0
    ended: bool = False


@dataclass(eq=False)  # rows are compared by identity
class _Row:
    """One choice being decoded: a row of a batch."""

    req: _Request
    adapter: str | None
    rng: torch.Generator
    length: int
    """Tokens in this row's cache (prompt plus the tokens already fed back)."""
    out: ChoiceOutput
    constraint: RowConstraint | None = None
    lazy: bool = False
    """A lazy grammar may still start (the text so far could open a tool call)."""
    last: int = -1
    """The token to feed next."""


@dataclass
class _Batch:
    """Rows on one base model that advance together; ``cache`` is theirs, left-padded to one width."""

    lm: Loaded
    rows: list[_Row]
    cache: Any
    batchable: bool


class TorchEngine:
    """An ``inference.engine.Engine`` on transformers and peft."""

    def __init__(
        self,
        catalog: Catalog,
        *,
        max_loaded: int = 2,
        max_adapters: int = 8,
        max_batch: int = 8,
        dtype: str = "auto",
    ) -> None:
        self.catalog = catalog
        self.max_loaded = max(1, max_loaded)
        self.max_adapters = max(1, max_adapters)
        self.max_batch = max(1, max_batch)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if dtype == "auto":
            dtype = "bfloat16" if self.device.type == "cuda" else "float32"
        self.dtype = getattr(torch, dtype)
        self._models: OrderedDict[str, Loaded] = OrderedDict()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="selftune-engine")
        self._lock = threading.Lock()
        self._pending: deque[_Request] = deque()
        self._scheduling = False  # a _schedule task is on the engine thread
        self._closed = False
        self.queued = 0
        self.active = 0
        self.largest_batch = 0

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pending = list(self._pending)
            self._pending.clear()
        for req in pending:
            req.future.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # --- public API -------------------------------------------------------------------------------

    def preload(self, spec: BaseModelSpec) -> Future[Loaded]:
        """Load a base model on the engine thread (converting it first if needed)."""
        return self._executor.submit(self._load, spec)

    def submit(self, gen: Generation) -> Future[None]:
        """Queue a generation; the future ends when its last choice has finished (or raises why not)."""
        req = _Request(gen, Future())
        with self._lock:
            if self._closed:
                req.future.cancel()
                return req.future
            self.queued += 1
            self._pending.append(req)
            if not self._scheduling:
                self._scheduling = True
                self._executor.submit(self._schedule)
        return req.future

    def stats(self) -> dict[str, Any]:
        return {
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "max_batch": self.max_batch,
            "largest_batch": self.largest_batch,
            "loaded_models": list(self._models),
            "loaded_adapters": sum(len(m.adapters) for m in self._models.values()),
            "queued_generations": self.queued,
            "active_generations": self.active,
        }

    # --- engine thread: loading -------------------------------------------------------------------

    def _load(self, spec: BaseModelSpec) -> Loaded:
        key = spec.name
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        loaded = load_base(self.catalog, spec, self.dtype, self.device)
        while len(self._models) >= self.max_loaded:
            # Rows still decoding on an evicted model keep it alive until they finish.
            evicted, _ = self._models.popitem(last=False)
            log.info("unloaded %s to make room", evicted)
        self._models[key] = loaded
        return loaded

    # --- engine thread: scheduling ----------------------------------------------------------------

    def _schedule(self) -> None:
        """Admit new requests, advance every batch by one token, repeat until nothing is left."""
        batches: list[_Batch] = []
        while True:
            with self._lock:
                closed, new = self._closed, list(self._pending)
                self._pending.clear()
                self.queued -= len(new)
                self.active += len(new)
                if closed or (not new and not batches):
                    self._scheduling = False
            if closed:
                for req in {id(r.req): r.req for b in batches for r in b.rows}.values():
                    req.future.cancel()
                return
            if not new and not batches:
                return
            for req in new:
                self._admit(req, batches)
            for batch in batches:
                self._step(batch)
            batches = [b for b in batches if b.rows]

    def _admit(self, req: _Request, batches: list[_Batch]) -> None:
        """Prefill each choice of a request and put its rows into batches; errors end the request."""
        gen = req.gen
        try:
            if gen.cancel.is_set():
                self._end(req)
                return
            lm = self._load(gen.model.base)
            busy = {r.adapter for b in batches for r in b.rows if r.adapter}
            adapter = load_adapter(lm, gen.model, busy, self.max_adapters) if gen.model.adapter is not None else None
            prompt = gen.prompt_ids or render_prompt(lm.tokenizer, gen.messages, gen.tools)
            gen.prompt_tokens = len(prompt)
            max_tokens = token_budget(gen, len(prompt), lm.context)
            params = gen.params
            req.running = gen.n
            for index in range(gen.n):
                rng = torch.Generator(device=self.device)
                if params.seed is None:
                    rng.seed()  # fresh entropy per request; never touches the global RNG
                else:
                    rng.manual_seed(params.seed + index)
                out = ChoiceOutput(gen, index, lm.tokenizer, max_tokens)
                row = _Row(req, adapter, rng, len(prompt), out, lazy=gen.lazy_grammar is not None)
                if gen.grammar is not None:
                    vocab = self._vocabulary(lm)
                    row.constraint = RowConstraint(vocab, gen.grammar, vocab.reserve(gen.grammar, max_tokens))
                with torch.inference_mode():
                    out = self._forward(
                        lm, [row], input_ids=torch.tensor([prompt], device=self.device), logits_to_keep=1
                    )
                if not self._accept(lm, row, out.logits[0, -1]):
                    self._join(batches, _Batch(lm, [row], out.past_key_values, batchable(out.past_key_values)))
        except Exception as e:
            gen.cancel.set()  # choices already in a batch leave it at its next step
            self._end(req, e)

    def _join(self, batches: list[_Batch], single: _Batch) -> None:
        """Merge a freshly prefilled row into a running batch on the same model, or start a new one."""
        for b in batches:
            if b.lm is single.lm and b.batchable and single.batchable and len(b.rows) < self.max_batch:
                b.cache = merge_caches(b.cache, single.cache)
                b.rows += single.rows
                return
        batches.append(single)

    @torch.inference_mode()
    def _step(self, batch: _Batch) -> None:
        """One token for every row of a batch; cancelled rows leave first, finished ones after."""
        cancelled = [r for r in batch.rows if r.req.gen.cancel.is_set()]
        for r in cancelled:  # no final event: the client is gone
            self._row_done(r)
        self._keep(batch, [r for r in batch.rows if r not in cancelled])
        rows = batch.rows
        if not rows:
            return
        self.largest_batch = max(self.largest_batch, len(rows))
        try:
            width = cache_width(batch.cache)
            padded: dict[str, torch.Tensor] = {}
            if any(r.length != width for r in rows):  # rows of one length need no mask (a lone row never)
                mask = torch.zeros((len(rows), width + 1), dtype=torch.long, device=self.device)
                for i, r in enumerate(rows):
                    mask[i, width - r.length :] = 1
                positions = torch.tensor([[r.length] for r in rows], device=self.device)
                padded = {"attention_mask": mask, "position_ids": positions}
            out = self._forward(
                batch.lm,
                rows,
                input_ids=torch.tensor([[r.last] for r in rows], device=self.device),
                past_key_values=batch.cache,
                **padded,
            )
        except Exception as e:
            for r in rows:
                self._end(r.req, e)
            batch.rows = []
            return
        batch.cache = out.past_key_values
        running = []
        for i, r in enumerate(rows):
            r.length += 1
            if not self._accept(batch.lm, r, out.logits[i, -1]):
                running.append(r)
        self._keep(batch, running)

    @staticmethod
    def _keep(batch: _Batch, rows: list[_Row]) -> None:
        """Shrink a batch to ``rows`` (a subset, in order), with their cache rows only."""
        if len(rows) == len(batch.rows):
            return
        if rows:
            keep = [i for i, r in enumerate(batch.rows) if r in rows]
            batch.cache = select_rows(batch.cache, keep, max(r.length for r in rows))
        batch.rows = rows

    def _maybe_constrain(self, lm: Loaded, row: _Row) -> None:
        """Start the lazy grammar once the answer opens with a tool call, from the tokens written so far."""
        grammar = row.req.gen.lazy_grammar
        text = row.out.text
        if grammar is None or (len(text) < len(TOOL_CALL_OPEN) and TOOL_CALL_OPEN.startswith(text)):
            return  # undecided yet
        row.lazy = False
        if not text.startswith(TOOL_CALL_OPEN):
            return
        vocab = self._vocabulary(lm)
        try:
            reserve = vocab.reserve(grammar, row.out.max_tokens)
        except InvalidRequest:
            return  # too little room left for a whole call: the answer stays free, as auto allows
        constraint = RowConstraint(vocab, grammar, reserve)
        if constraint.follow(row.out.ids):
            row.constraint = constraint

    def _vocabulary(self, lm: Loaded) -> Vocabulary:
        """The model's vocabulary for constrained decoding, built on first use (about a second)."""
        if lm.vocabulary is None:
            size = int(lm.model.get_output_embeddings().weight.shape[0])
            lm.vocabulary = Vocabulary.build(lm.tokenizer, lm.stop_ids, size)
        return lm.vocabulary

    def _forward(self, lm: Loaded, rows: list[_Row], **kwargs: Any) -> Any:
        if lm.peft is None:
            return lm.model(use_cache=True, **kwargs)
        # Once an adapter is loaded, its LoRA layers sit inside lm.model: every row names its own.
        return lm.peft(use_cache=True, adapter_names=[r.adapter or BASE for r in rows], **kwargs)

    def _accept(self, lm: Loaded, row: _Row, logits: torch.Tensor) -> bool:
        """Sample this row's next token and pass it on to its output; True when the row is done."""
        params, out = row.req.gen.params, row.out
        logits = logits.float()
        greedy = False
        if row.constraint is not None:
            logits, greedy = row.constraint.mask(logits, out.max_tokens - len(out.ids))
        token = int(torch.argmax(logits)) if greedy else sample(logits, params.temperature, params.top_p, row.rng)
        if token in lm.stop_ids:
            finish: str | None = "stop"
        else:
            row.last = token
            if row.constraint is not None:
                row.constraint.advance(token)
            finish = out.push(token)
            if finish != "stop" and row.constraint is not None and row.constraint.finished:
                finish = "stop"  # the grammar allows nothing more: as if end of turn, even on the last token
            if finish is None and row.lazy:
                self._maybe_constrain(lm, row)
        if finish is None:
            return False
        out.finish(finish)
        self._row_done(row)
        return True

    def _row_done(self, row: _Row) -> None:
        row.req.running -= 1
        if row.req.running == 0:
            self._end(row.req)

    def _end(self, req: _Request, error: BaseException | None = None) -> None:
        """A request is over: all its choices finished, it was cancelled, or ``error`` stopped it."""
        if req.ended:
            return
        req.ended = True
        with self._lock:
            self.active -= 1
        if req.future.done():  # cancelled at shutdown
            return
        if error is None:
            req.future.set_result(None)
        else:
            req.future.set_exception(error)
