"""The generation engine: loads base models once and generates from them, off the event loop.

All model work runs on one dedicated thread. On a CPU, two generations at once would only share
the same cores and both run slower, and one thread makes the order of model loads and evictions
simple. Callers ``submit`` a ``Generation`` and receive ``Event``s through its ``emit`` callback,
so the HTTP layer (or anything else) decides how to deliver them. A generation whose ``cancel``
event is set stops at the next token; one cancelled while still queued never starts.

Fine-tuned models are LoRA adapters on a shared base: the first one wraps the loaded base in a
``PeftModel``, later ones are added beside it (at most ``max_adapters``, least recently used
dropped), and each request switches on its own adapter, or none for the base model.

The decode loop is written out rather than delegated to ``generate()``: it needs per-token
cancellation, OpenAI-style stop strings that are cut from the output, and a per-request seeded
``torch.Generator`` that leaves global RNG state alone.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
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


class Engine:
    def __init__(self, catalog: Catalog, *, max_loaded: int = 2, max_adapters: int = 8, dtype: str = "auto") -> None:
        self.catalog = catalog
        self.max_loaded = max(1, max_loaded)
        self.max_adapters = max(1, max_adapters)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if dtype == "auto":
            dtype = "bfloat16" if self.device.type == "cuda" else "float32"
        self.dtype = getattr(torch, dtype)
        self._models: OrderedDict[str, _Loaded] = OrderedDict()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="selftune-engine")
        self._lock = threading.Lock()
        self.queued = 0
        self.active = 0

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # --- public API -------------------------------------------------------------------------------

    def preload(self, spec: BaseModelSpec) -> Future[_Loaded]:
        """Load a base model on the engine thread (converting it first if needed)."""
        return self._executor.submit(self._load, spec)

    def submit(self, gen: Generation) -> Future[None]:
        with self._lock:
            self.queued += 1
        return self._executor.submit(self._run, gen)

    def stats(self) -> dict[str, Any]:
        return {
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "loaded_models": list(self._models),
            "loaded_adapters": sum(len(m.adapters) for m in self._models.values()),
            "queued_generations": self.queued,
            "active_generations": self.active,
        }

    # --- engine thread ----------------------------------------------------------------------------

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
            evicted, _ = self._models.popitem(last=False)
            log.info("unloaded %s to make room", evicted)
        self._models[key] = loaded
        log.info("loaded %s from %s in %.2fs", spec.name, folder, time.perf_counter() - t0)
        return loaded

    def _run(self, gen: Generation) -> None:
        with self._lock:
            self.queued -= 1
            self.active += 1
        try:
            if gen.cancel.is_set():
                return
            lm = self._load(gen.model.base)
            with self._adapter(lm, gen.model):
                self._generate(lm, gen)
        finally:
            with self._lock:
                self.active -= 1

    @contextmanager
    def _adapter(self, lm: _Loaded, model: Resolved) -> Iterator[None]:
        """Serve ``model``: its adapter switched on, or, for a base model, every adapter switched off."""
        if model.adapter is None:
            with lm.peft.disable_adapter() if lm.peft is not None else nullcontext():
                yield
            return
        name = self._load_adapter(lm, model)  # first, since the first adapter creates lm.peft
        lm.peft.set_adapter(name)
        yield

    def _load_adapter(self, lm: _Loaded, model: Resolved) -> str:
        """Load (or reuse) the adapter of a fine-tuned model onto its shared base; evict the LRU one."""
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
        while len(lm.adapters) > self.max_adapters:
            _, evicted = lm.adapters.popitem(last=False)
            lm.peft.delete_adapter(evicted)
        log.info("loaded adapter of %s in %.2fs", model.id, time.perf_counter() - t0)
        return name

    def _generate(self, lm: _Loaded, gen: Generation) -> None:
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
        max_tokens = min(params.max_tokens, room)
        for index in range(gen.n):
            seed = None if params.seed is None else params.seed + index
            self._decode(lm, prompt, params, max_tokens, seed, index, gen)
            if gen.cancel.is_set():
                return

    @torch.inference_mode()
    def _decode(
        self,
        lm: _Loaded,
        prompt: list[int],
        params: SamplingParams,
        max_tokens: int,
        seed: int | None,
        index: int,
        gen: Generation,
    ) -> None:
        rng = torch.Generator(device=self.device)
        if seed is None:
            rng.seed()  # fresh entropy per request; never touches the global RNG
        else:
            rng.manual_seed(seed)
        holdback = max((len(s) for s in params.stop), default=1) - 1
        out_ids: list[int] = []
        sent = 0  # characters of decoded text already emitted
        finish = "length"
        past = None
        step_input = torch.tensor([prompt], device=self.device)
        text = ""
        for _ in range(max_tokens):
            if gen.cancel.is_set():
                return
            out = lm.model(input_ids=step_input, past_key_values=past, use_cache=True)
            past = out.past_key_values
            token = _sample(out.logits[0, -1].float(), params.temperature, params.top_p, rng)
            if token in lm.stop_ids:
                finish = "stop"
                break
            out_ids.append(token)
            step_input = torch.tensor([[token]], device=self.device)
            text = lm.tokenizer.decode(out_ids, skip_special_tokens=True)
            cut = _find_stop(text, params.stop)
            if cut is not None:
                text, finish = text[:cut], "stop"
                break
            # Hold back a possible stop-string prefix and any half-decoded UTF-8 character.
            safe = len(text) - holdback
            while safe > sent and text[safe - 1] == "\ufffd":
                safe -= 1
            if safe > sent:
                gen.emit(Event(index, text[sent:safe]))
                sent = safe
        gen.emit(Event(index, text[sent:], finish_reason=finish, completion_tokens=len(out_ids)))


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
