"""Sampling a reinforcement step's answers with llama.cpp: the hot loop of ``train.grpo`` on a CPU.

Each step the adapter as it is now is saved and converted to a GGUF LoRA (``convert.lora``: about
0.2 s for SmolLM2's), a llama.cpp server is built on the base's GGUF with it (about 0.6 s: the
weights are memory-mapped), and every answer of the step is requested at once, so llama.cpp's
continuous batching decodes them together and a slot frees as soon as its answer ends. Measured on
2 cores (``python -m bench.rft_sampling``, a default step of 16 answers up to 128 tokens): 9.9 s
against 14.8 s in the training process on an AMD EPYC, 12.1 s against 16.1 s on a Xeon, both with
avx512_bf16; the training process pads every answer of a batch to its longest.

The base's GGUF is the file the server serves; where it came as a GGUF (the default model's Q4_1),
its de-quantised weights are exactly the ones the recipe trains, and llama.cpp differs only in how
it computes (activations quantised for the dot products). The answers are therefore very nearly,
not exactly, the policy's own; with one optimisation pass per batch the GRPO loss takes them as
given (as TRL does with vLLM), and the KL anchor and the ratio are computed by the training model.

Not repeatable to the token: llama.cpp batches requests as they arrive, and its kernels' sums depend
on the batch, so the same seeds can give other answers on another run (the in-process sampler's do not).

Used only where it helps and can: on a CPU, in one process or data parallel (each rank samples its
share), for families llama.cpp serves. On a GPU, sharded, or without a GGUF, the step samples in
the training process (``train.generate``).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from selftune.convert.lora import convert_adapter, supported

SLACK = 8
"""Context cells per answer beyond its prompt and token budget (llama.cpp's own bookkeeping)."""


class LlamaCppSampler:
    """Answers from llama.cpp on ``gguf`` with the model's adapter as it is at each call."""

    def __init__(self, gguf: Path, base_dir: Path, threads: int) -> None:
        import xllamacpp

        self._x = xllamacpp
        self.gguf, self.base_dir = gguf, base_dir
        self.threads = threads
        self.timings: dict[str, float] = {}
        """The last call's seconds: saving and converting the adapter, building the server, sampling."""

    def describe(self) -> str:
        return f"llama.cpp on {self.gguf.name}"

    def sample(
        self,
        model: Any,
        prompts: Sequence[list[int]],
        limits: Sequence[int],
        samples: int,
        seed: int,
        stops: set[int],
        temperature: float = 1.0,
    ) -> list[list[int]]:
        """``samples`` answers to each prompt, in prompt order, each cut after its first stop token
        (kept), drawn at ``temperature`` with no top-k, top-p or min-p (the policy's own distribution;
        0 is greedy); answer ``j`` of prompt ``k`` uses the seed ``seed + k * samples + j``."""
        pairs = list(zip(prompts, limits, strict=True))
        if not pairs:  # a process whose share of a small batch is nothing
            return []
        t0 = time.perf_counter()
        # Built per call, since the adapter changes every step; llama.cpp reads the converted
        # adapter while building, so its folder goes at once.
        with tempfile.TemporaryDirectory(prefix="selftune-sampling-") as folder:
            model.save_pretrained(folder)
            lora = convert_adapter(folder, self.base_dir)
            t1 = time.perf_counter()
            context = samples * sum(len(p) + n + SLACK for p, n in pairs)
            server = self._x.Server(self._params(lora, len(pairs) * samples, context))
        t2 = time.perf_counter()
        jobs = [(p, n, seed + k * samples + j) for k, (p, n) in enumerate(pairs) for j in range(samples)]
        with ThreadPoolExecutor(len(jobs)) as pool:  # llama.cpp batches what arrives together
            answers = list(pool.map(lambda job: self._answer(server, job[0], job[1], job[2], stops, temperature), jobs))
        self.timings = {
            "convert_seconds": t1 - t0,
            "build_seconds": t2 - t1,
            "sampling_seconds": time.perf_counter() - t2,
        }
        return answers

    def _params(self, lora: Path, slots: int, context: int) -> Any:
        x = self._x
        p = x.CommonParams()
        p.model.path = str(self.gguf)
        p.n_parallel = slots
        p.n_ctx = context  # shared by the slots (kv_unified)
        p.kv_unified = True
        p.cpuparams.n_threads = self.threads
        p.cpuparams_batch.n_threads = self.threads
        p.warmup = False
        p.verbosity = -1
        p.lora_adapters = [x.CommonAdapterLoraInfo(str(lora), 1.0)]
        return p

    def _answer(
        self, server: Any, prompt: list[int], limit: int, seed: int, stops: set[int], temperature: float
    ) -> list[int]:
        tokens: list[int] = []
        failure: list[str] = []

        def on_chunk(chunk: dict[str, Any]) -> bool:  # True stops llama.cpp (and frees the slot)
            if "choices" not in chunk:
                failure.append(str(chunk.get("error") or chunk))
                return True
            for choice in chunk["choices"]:
                for entry in (choice.get("logprobs") or {}).get("content") or []:
                    tokens.append(int(entry["id"]))
                    if tokens[-1] in stops or len(tokens) >= limit:
                        return True
            return False

        request = {
            "prompt": prompt,
            "max_tokens": limit,
            "temperature": temperature,
            "top_k": 0,
            "top_p": 1.0,
            "min_p": 0.0,
            "seed": seed,
            "stream": True,
            "logprobs": 1,  # each chunk then names its token ids
        }
        # Where llama.cpp ends an answer on a token of its own end-of-generation set that is not one of
        # the model's stop tokens (``<|endoftext|>`` by its name), it does not stream that token: the
        # answer is then what came, not ended (it may be empty), as a budget-cut one is.
        server.handle_completions(request, on_chunk)
        if failure:
            raise RuntimeError(f"llama.cpp could not sample an answer: {failure[0]}")
        return tokens


def llamacpp_sampler(gguf: str | None, base_dir: str, device: str, sharded: bool) -> LlamaCppSampler | None:
    """The sampler for a reinforcement job where llama.cpp can and should sample (see above), else None."""
    config = json.loads((Path(base_dir) / "config.json").read_text(encoding="utf-8"))
    if gguf is None or device != "cpu" or sharded or not supported(config):
        return None
    import torch

    return LlamaCppSampler(Path(gguf), Path(base_dir), torch.get_num_threads())
