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

Adapters: each base model has one current llama.cpp server holding the adapters in use, rebuilt
when a request needs another (``inference.llamacpp_bases``). Every request lists every loaded
adapter with its scale (1 for its own, 0 for the rest), so an adapter a request does not name is
never applied.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from selftune.catalog import BaseModelSpec
from selftune.data.render import render_prompt
from selftune.errors import InvalidRequest, SelftuneError
from selftune.inference.constrain import RowConstraint, Vocabulary
from selftune.inference.generation import Generation
from selftune.inference.llamacpp_bases import Base, Bases, ModelFiles, Server
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


class LlamaCppEngine:
    def __init__(
        self, catalog: ModelFiles, *, max_batch: int = 8, max_adapters: int = 8, threads: int = 0, max_loaded: int = 2
    ) -> None:
        self.catalog = catalog
        self.max_batch = max(1, max_batch)
        self.bases = Bases(
            catalog, max_batch=self.max_batch, max_adapters=max_adapters, threads=threads, max_loaded=max_loaded
        )
        self._lock = threading.Lock()
        # handle_completions blocks its thread for a whole answer; llama.cpp's own loop does the work.
        self._pool = ThreadPoolExecutor(max_workers=4 * self.max_batch + 4, thread_name_prefix="selftune-llamacpp")
        self._closed = False
        self.active = 0

    @property
    def servers_built(self) -> int:
        """llama.cpp servers built so far (a new adapter builds one)."""
        return self.bases.servers_built

    def serves(self, spec: BaseModelSpec) -> bool:
        """llama.cpp serves base models that come as a GGUF file or were converted to one."""
        return self.catalog.gguf(spec) is not None

    # --- public API, as ``inference.engine.Engine`` -----------------------------------------------

    def preload(self, spec: BaseModelSpec) -> Future[Any]:
        return self._pool.submit(self.bases.get, spec)

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
            "threads": self.bases.threads,
            "max_batch": self.max_batch,
            "loaded_models": self.bases.loaded(),
            "loaded_adapters": self.bases.loaded_adapters(),
            "servers_built": self.bases.servers_built,
            "active_generations": self.active,
        }

    def close(self) -> None:
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.bases.close()

    # --- generation -------------------------------------------------------------------------------

    def _generate(self, gen: Generation, future: Future[None]) -> None:
        """Run every choice of ``gen`` (one llama.cpp request each, in parallel) and end ``future``."""
        try:
            base = self.bases.get(gen.model.base)
            server, lora = self.bases.lease(base, gen.model)
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
            self.bases.release(base, server)

    def _finish(self, future: Future[None], error: BaseException | None) -> None:
        with self._lock:
            self.active -= 1
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)

    @staticmethod
    def _request(
        server: Server, lora: int | None, gen: Generation, prompt: list[int], max_tokens: int, stop_ids: set[int]
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

    def _vocabulary(self, base: Base) -> Vocabulary:
        if base.vocabulary is None:
            base.vocabulary = Vocabulary.build(base.tokenizer, base.stop_ids, base.vocab_size)
        return base.vocabulary

    def _choice(
        self, server: Server, base: Base, request: dict[str, Any], out: ChoiceOutput, seed: int | None, free: int
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

    def _close(self, base: Base, out: ChoiceOutput) -> None:
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
