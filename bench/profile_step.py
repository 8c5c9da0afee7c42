"""Where a selftune training step spends its time: ``torch.profiler`` over a few steps of the recipe's
own functions, on the benchmark's data and settings (run after ``make bench``, which prepares both).

    python -m bench.profile_step [--steps 6]
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from torch.profiler import ProfilerActivity, profile
from transformers import AutoModelForCausalLM, AutoTokenizer

from bench.measure import BATCH_SIZE, LORA, MAX_LENGTH, MODEL, REPO, SEED, native_bf16
from selftune.data.render import render_file
from selftune.train.lora import keep_activations_in_bf16
from selftune.train.memory import plan_job
from selftune.train.step import accumulate, batches


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--work", type=Path, default=REPO / ".bench")
    args = p.parse_args()
    base = args.work / "home" / "models" / MODEL
    tok = AutoTokenizer.from_pretrained(base)
    rows = render_file(tok, args.work / "train200.jsonl", MAX_LENGTH).rows
    longest = max(len(ids) for ids, _ in rows)
    bf16 = native_bf16()  # as the recipe: bf16 where the hardware has it, else fp32
    dtype = torch.bfloat16 if bf16 else torch.float32
    order = batches([len(ids) for ids, _ in rows], BATCH_SIZE, random.Random(SEED))
    width = max(max(len(rows[j][0]) for j in idx) * len(idx) for idx in order)
    # The recipe's own memory plan picks the attention, micro-batches and cross-entropy chunks.
    plan = plan_job(
        base, longest=longest, batch_tokens=width, lora_r=LORA["r"], lora_targets=LORA["targets"], bf16=bf16
    )
    attention = plan.attention
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, attn_implementation=attention)
    cfg = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], target_modules=LORA["targets"], task_type="CAUSAL_LM")
    model = get_peft_model(model, cfg)
    if bf16:
        keep_activations_in_bf16(model)
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def autocast() -> torch.autocast:
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)

    def step(i: int) -> None:  # the recipe's step, in micro-batches as its memory plan cuts them
        rows_i = [rows[j] for j in order[i]]
        accumulate(model, rows_i, pad, torch.device("cpu"), autocast, plan.micro_tokens, plan.ce_chunk)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(0)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(1, args.steps + 1):
            step(i)
    print(
        f"{args.steps} steps, batch size {BATCH_SIZE}, {'bf16' if bf16 else 'fp32'}, {attention} attention, "
        f"longest example {longest} tokens"
    )
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=40))


if __name__ == "__main__":
    main()
