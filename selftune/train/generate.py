"""Greedy generation inside the training process, for the end-of-job quality guard and evaluation.

Both need the model that was just trained, with and without its adapter, so they run here rather
than through the inference engine, on batches of prompts grouped by length with left padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch

from selftune.data.render import Prompt, render_prompt, stop_token_ids


def greedy_tokens(
    model: Any,
    tokenizer: Any,
    device: torch.device,
    autocast: Any,
    prompts: Sequence[Prompt],
    limits: Sequence[int],
    adapter: bool = True,
    batch_size: int = 16,
) -> list[list[int]]:
    """Greedy continuations (up to each prompt's limit, stop tokens kept), batched by prompt length with
    left padding; ``adapter=False`` runs the base model (the adapter switched off)."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = stop_token_ids(tokenizer, model.generation_config)
    ids = [render_prompt(tokenizer, p) for p in prompts]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    rows: list[list[int]] = [[] for _ in ids]
    head = model.get_output_embeddings()
    hook = head.register_forward_pre_hook(_contiguous) if head is not None else None
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            width = max(len(ids[i]) for i in chunk)
            input_ids = torch.tensor([[pad_id] * (width - len(ids[i])) + ids[i] for i in chunk], device=device)
            mask = torch.tensor([[0] * (width - len(ids[i])) + [1] * len(ids[i]) for i in chunk], device=device)
            with torch.no_grad(), autocast(), nullcontext() if adapter else model.disable_adapter():
                generated = model.generate(
                    input_ids=input_ids,
                    attention_mask=mask,
                    max_new_tokens=max(limits[i] for i in chunk),
                    do_sample=False,
                    eos_token_id=sorted(stops),
                    pad_token_id=pad_id,
                )[:, width:]
            for i, row in zip(chunk, generated.tolist(), strict=True):
                rows[i] = row[: limits[i]]
    finally:
        if hook is not None:
            hook.remove()
    return rows


def _contiguous(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """The output layer's input made contiguous. Generation hands it the prompt's last position, a
    strided view; ``matmul`` cannot fold a strided 3-D input into one matrix product, so it expands
    the weight to every row and copies it: 16 x 640 x 262,144 values for Gemma 3's vocabulary, 11 s
    of the guard's 16 s in bf16 on 2 cores, where this copy of the input costs microseconds."""
    return (args[0].contiguous(), *args[1:])
