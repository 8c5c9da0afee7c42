"""Which engine should sample a reinforcement step's answers: the training process itself
(``train.generate``, transformers' ``generate`` on the model being trained), or llama.cpp with the
step's adapter converted to GGUF and a server built on it (``train.sampling``, what the recipe uses on
a CPU since these numbers)?

    python -m bench.rft_sampling [--work DIR] [--steps N]

SmolLM2 with a LoRA whose weights are not zero (a trained adapter's scale), a default reinforcement
step: 4 "What is the capital of X?" prompts, 4 answers each, up to 128 tokens, temperature 1, no
top-k or top-p. Each engine answers ``N`` steps' prompts; per step:

- **in-process**: ``generate_tokens`` in bf16 where the CPU has it (the recipe's precision), the
  adapter unmerged, the 16 answers in one batch (the batch decodes until its longest answer ends):
  how a job samples on a GPU or sharded;
- **llama.cpp**: ``train.sampling.LlamaCppSampler``, how a job samples on a CPU: the adapter saved
  and converted, a server built on the served Q4_1 base (whose weights are exactly the de-quantised
  ones the recipe trains) with that adapter, and the 16 answers requested at once (continuous
  batching: a slot frees when its answer ends). The conversion and the build are part of every
  step: the adapter changes each step.

Printed: each engine's median step seconds, its parts, and the mean answer length.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from statistics import mean, median
from typing import Any

from bench.dpo_quality import split

GROUP, PROMPTS, TOKENS = 4, 4, 128


def _model(base_dir: Path, bf16: bool) -> tuple[Any, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bench.measure import LORA

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.bfloat16 if bf16 else torch.float32)
    config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], target_modules=LORA["targets"], task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    with torch.no_grad():  # B = 0 at init: give it a trained adapter's size so the adapter does something
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 1e-3)
    return model, tokenizer


def in_process(model: Any, tokenizer: Any, prompts: list[list[int]], bf16: bool) -> dict[str, Any]:
    import torch

    from selftune.data.render import stop_token_ids
    from selftune.train.generate import generate_tokens

    def autocast() -> Any:
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)

    t0 = time.perf_counter()
    rows = generate_tokens(
        model,
        tokenizer,
        torch.device("cpu"),
        autocast,
        prompts,
        [TOKENS] * len(prompts),
        batch_size=GROUP * PROMPTS,
        samples=GROUP,
        temperature=1.0,
    )
    stops = stop_token_ids(tokenizer, model.generation_config)
    lengths = [next((k + 1 for k, t in enumerate(r) if t in stops), len(r)) for r in rows]
    return {"seconds": time.perf_counter() - t0, "answer_tokens": mean(lengths)}


def with_llamacpp(
    model: Any, tokenizer: Any, base_dir: Path, gguf: Path, prompts: list[list[int]], seed: int
) -> dict[str, Any]:
    import torch

    from selftune.data.render import stop_token_ids
    from selftune.train.sampling import LlamaCppSampler

    t0 = time.perf_counter()
    stops = stop_token_ids(tokenizer, model.generation_config)
    sampler = LlamaCppSampler(gguf, base_dir, torch.get_num_threads())
    rows = sampler.sample(model, prompts, [TOKENS] * len(prompts), GROUP, seed * 1000, stops)
    return {"seconds": time.perf_counter() - t0, **sampler.timings, "answer_tokens": mean(len(r) for r in rows)}


def run(base_dir: Path, gguf: Path, steps: int = 3) -> dict[str, Any]:
    from bench.measure import log, native_bf16
    from selftune.data.render import render_prompt

    bf16 = native_bf16()
    model, tokenizer = _model(base_dir, bf16)
    model.eval()
    questions, _ = split(seed=1)
    r: dict[str, Any] = {"steps": steps, "bf16": bf16, "in-process": [], "llama.cpp": []}
    for step in range(steps):
        batch = questions[step * PROMPTS : (step + 1) * PROMPTS]
        prompts = [render_prompt(tokenizer, [{"role": "user", "content": q.prompt}]) for q in batch]
        r["in-process"].append(in_process(model, tokenizer, prompts, bf16))
        r["llama.cpp"].append(with_llamacpp(model, tokenizer, base_dir, gguf, prompts, step))
        log(f"  step {step + 1}: " + ", ".join(f"{e} {r[e][-1]['seconds']:.1f} s" for e in ("in-process", "llama.cpp")))
    r["summary"] = {
        engine: {
            key: median(s[key] for s in r[engine]) if key.endswith("seconds") else mean(s[key] for s in r[engine])
            for key in r[engine][0]
        }
        for engine in ("in-process", "llama.cpp")
    }
    return r


def main() -> None:
    from bench.measure import REPO, _default_gguf, base_model_dir

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--work", type=Path, default=REPO / ".bench" / "rft-sampling")
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    r = run(base_model_dir(args.work), _default_gguf(), args.steps)
    print(json.dumps(r["summary"], indent=2))


if __name__ == "__main__":
    main()
