"""The generation engine: loads base models once and generates from them, off the event loop.

All model work runs on one dedicated thread, which batches: every request in flight on the same
base model advances one token per forward pass (continuous batching, as vLLM does). Decoding one
token reads every weight once whatever the batch size, so on a CPU, where that read is the cost,
eight concurrent requests take little longer per token than one. A request joins the running batch
after its own prompt pass and leaves it when it finishes; the key/value caches are left-padded to
a common length and the padding masked.

Callers ``submit`` a ``Generation`` and receive ``Event``s through its ``emit`` callback, so the
HTTP layer (or anything else) decides how to deliver them. A generation whose ``cancel`` event is
set stops at the next token; one cancelled while still queued never starts.

Fine-tuned models are LoRA adapters on a shared base: the first one wraps the loaded base in a
``PeftModel``, later ones are added beside it (at most ``max_adapters``, least recently used and
idle dropped). Rows of one batch may use different adapters, or none (peft's ``adapter_names``).

The decode loop is written out rather than delegated to ``generate()``: it needs batching across
requests, per-token cancellation, OpenAI-style stop strings that are cut from the output, and a
per-request seeded ``torch.Generator`` that leaves global RNG state alone.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from selftune.catalog import BaseModelSpec, Catalog, Resolved
from selftune.data.render import render_prompt, stop_token_ids
from selftune.errors import InvalidRequest, NotFound

log = logging.getLogger("selftune.engine")


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


@dataclass
class _Loaded:
    model: Any
    tokenizer: Any
    stop_ids: set[int]
    context: int
    peft: Any = None
    """The ``PeftModel`` wrapping ``model`` once a first adapter is loaded (its LoRA layers are
    injected into ``model`` itself, which keeps serving the base with the adapters switched off)."""
    adapters: OrderedDict[str, str] = field(default_factory=OrderedDict)
    """Adapter folder -> peft adapter name, least recently used first."""


BASE = "__base__"
"""peft's name for "no adapter" in a mixed batch."""


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
    index: int
    adapter: str | None
    max_tokens: int
    rng: torch.Generator
    holdback: int
    length: int
    """Tokens in this row's cache (prompt plus the tokens already fed back)."""
    last: int = -1
    """The token to feed next."""
    out_ids: list[int] = field(default_factory=list)
    text: str = ""
    sent: int = 0
    """Characters of ``text`` already emitted."""


@dataclass
class _Batch:
    """Rows on one base model that advance together; ``cache`` is theirs, left-padded to one width."""

    lm: _Loaded
    rows: list[_Row]
    cache: Any
    batchable: bool


class Engine:
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
        self._models: OrderedDict[str, _Loaded] = OrderedDict()
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

    def preload(self, spec: BaseModelSpec) -> Future[_Loaded]:
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

    def _load(self, spec: BaseModelSpec) -> _Loaded:
        key = spec.name
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        from transformers import AutoModelForCausalLM, AutoTokenizer

        t0 = time.perf_counter()
        folder: Path = self.catalog.materialize(spec)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=self.dtype)
        model = model.to(self.device).eval()  # type: ignore[arg-type]
        if tokenizer.chat_template is None:
            raise InvalidRequest(
                f"base model {spec.name!r} has no chat template, so chat messages cannot be rendered; "
                "add a chat_template to its tokenizer_config.json",
                param="model",
            )
        context = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
        loaded = _Loaded(model, tokenizer, stop_token_ids(tokenizer, model.generation_config), context)
        while len(self._models) >= self.max_loaded:
            # Rows still decoding on an evicted model keep it alive until they finish.
            evicted, _ = self._models.popitem(last=False)
            log.info("unloaded %s to make room", evicted)
        self._models[key] = loaded
        log.info("loaded %s from %s in %.2fs", spec.name, folder, time.perf_counter() - t0)
        return loaded

    def _load_adapter(self, lm: _Loaded, model: Resolved, busy: set[str]) -> str:
        """Load (or reuse) the adapter of a fine-tuned model onto its shared base; evict the least
        recently used adapter that no running row needs."""
        assert model.adapter is not None
        key = str(model.adapter)
        if key in lm.adapters:
            lm.adapters.move_to_end(key)
            return lm.adapters[key]
        if not (model.adapter / "adapter_config.json").is_file():
            raise NotFound(
                f"the weights of `{model.id}` are missing ({model.adapter}); delete the model and train it again",
                param="model",
                code="model_not_found",
            )
        from peft import PeftModel

        t0 = time.perf_counter()
        name = "a" + hashlib.sha1(key.encode()).hexdigest()[:16]
        if lm.peft is None:
            lm.peft = PeftModel.from_pretrained(lm.model, model.adapter, adapter_name=name)
        else:
            lm.peft.load_adapter(model.adapter, adapter_name=name)
        lm.peft.eval()
        lm.adapters[key] = name
        for old in [k for k, v in lm.adapters.items() if v not in busy and v != name]:
            if len(lm.adapters) <= self.max_adapters:
                break
            lm.peft.delete_adapter(lm.adapters.pop(old))
        log.info("loaded adapter of %s in %.2fs", model.id, time.perf_counter() - t0)
        return name

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
            adapter = self._load_adapter(lm, gen.model, busy) if gen.model.adapter is not None else None
            prompt = render_prompt(lm.tokenizer, gen.messages)
            gen.prompt_tokens = len(prompt)
            room = lm.context - len(prompt)
            if room <= 0:
                raise InvalidRequest(
                    f"the prompt is {len(prompt)} tokens, but {gen.model.id} has a context of {lm.context}; "
                    "shorten the messages",
                    param="messages",
                    code="context_length_exceeded",
                )
            params = gen.params
            req.running = gen.n
            holdback = max((len(s) for s in params.stop), default=1) - 1
            for index in range(gen.n):
                rng = torch.Generator(device=self.device)
                if params.seed is None:
                    rng.seed()  # fresh entropy per request; never touches the global RNG
                else:
                    rng.manual_seed(params.seed + index)
                row = _Row(req, index, adapter, min(params.max_tokens, room), rng, holdback, len(prompt))
                with torch.inference_mode():
                    out = self._forward(
                        lm, [row], input_ids=torch.tensor([prompt], device=self.device), logits_to_keep=1
                    )
                if not self._accept(lm, row, out.logits[0, -1]):
                    self._join(batches, _Batch(lm, [row], out.past_key_values, _batchable(out.past_key_values)))
        except Exception as e:
            gen.cancel.set()  # choices already in a batch leave it at its next step
            self._end(req, e)

    def _join(self, batches: list[_Batch], single: _Batch) -> None:
        """Merge a freshly prefilled row into a running batch on the same model, or start a new one."""
        for b in batches:
            if b.lm is single.lm and b.batchable and single.batchable and len(b.rows) < self.max_batch:
                b.cache = _merge_caches(b.cache, single.cache)
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
            width = _cache_width(batch.cache)
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
            batch.cache = _select_rows(batch.cache, keep, max(r.length for r in rows))
        batch.rows = rows

    def _forward(self, lm: _Loaded, rows: list[_Row], **kwargs: Any) -> Any:
        if lm.peft is None:
            return lm.model(use_cache=True, **kwargs)
        # Once an adapter is loaded, its LoRA layers sit inside lm.model: every row names its own.
        return lm.peft(use_cache=True, adapter_names=[r.adapter or BASE for r in rows], **kwargs)

    def _accept(self, lm: _Loaded, row: _Row, logits: torch.Tensor) -> bool:
        """Sample this row's next token and emit what became safe to send; True when the row is done."""
        gen, params = row.req.gen, row.req.gen.params
        token = _sample(logits.float(), params.temperature, params.top_p, row.rng)
        finish = None
        if token in lm.stop_ids:
            finish = "stop"
        else:
            row.out_ids.append(token)
            row.last = token
            row.text = lm.tokenizer.decode(row.out_ids, skip_special_tokens=True)
            cut = _find_stop(row.text, params.stop)
            if cut is not None:
                row.text, finish = row.text[:cut], "stop"
            elif len(row.out_ids) >= row.max_tokens:
                finish = "length"
        if finish is None:
            # Hold back a possible stop-string prefix and any half-decoded UTF-8 character.
            safe = len(row.text) - row.holdback
            while safe > row.sent and row.text[safe - 1] == "\ufffd":
                safe -= 1
            if safe > row.sent:
                gen.emit(Event(row.index, row.text[row.sent : safe]))
                row.sent = safe
            return False
        gen.emit(Event(row.index, row.text[row.sent :], finish_reason=finish, completion_tokens=len(row.out_ids)))
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


# --- batched key/value caches ---------------------------------------------------------------------------


def _batchable(cache: Any) -> bool:
    """Whether rows can share this cache: plain growing layers only (sliding-window caches drop
    old positions on their own schedule, so those models decode one request at a time)."""
    from transformers.cache_utils import DynamicLayer

    return all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", [None]))


def _cache_width(cache: Any) -> int:
    return int(cache.get_seq_length())


def _merge_caches(a: Any, b: Any) -> Any:
    """Stack cache ``b`` under cache ``a`` in the batch dimension, left-padding the shorter one."""
    wa, wb = _cache_width(a), _cache_width(b)
    width = max(wa, wb)
    for la, lb in zip(a.layers, b.layers, strict=True):
        la.keys = torch.cat([_left_pad(la.keys, width - wa), _left_pad(lb.keys, width - wb)])
        la.values = torch.cat([_left_pad(la.values, width - wa), _left_pad(lb.values, width - wb)])
    return a


def _left_pad(t: torch.Tensor, n: int) -> torch.Tensor:
    if n == 0:
        return t
    return torch.cat([t.new_zeros((*t.shape[:2], n, t.shape[3])), t], dim=2)


def _select_rows(cache: Any, keep: list[int], longest: int) -> Any:
    """Keep some rows of a cache, and drop the left padding no remaining row needs."""
    index = torch.tensor(keep, device=cache.layers[0].keys.device)
    width = _cache_width(cache)
    for layer in cache.layers:
        layer.keys = layer.keys[index, :, width - longest :]
        layer.values = layer.values[index, :, width - longest :]
    return cache


def _find_stop(text: str, stops: tuple[str, ...]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else None


def _sample(logits: torch.Tensor, temperature: float, top_p: float, rng: torch.Generator) -> int:
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < top_p
        sorted_probs = sorted_probs * keep
        choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=rng)
        return int(order[choice])
    return int(torch.multinomial(probs, 1, generator=rng))
