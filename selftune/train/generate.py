"""Generation inside the training process: greedy for the end-of-job quality guard and evaluation,
sampled for reinforcement steps (``train.grpo``).

All need the model being trained, with or without its adapter, as it is at that moment, so they run
here rather than through the inference engine, on batches of prompts grouped by length with left
padding.
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
    ids = [render_prompt(tokenizer, p) for p in prompts]
    return generate_tokens(model, tokenizer, device, autocast, ids, limits, adapter=adapter, batch_size=batch_size)


def generate_tokens(
    model: Any,
    tokenizer: Any,
    device: torch.device,
    autocast: Any,
    ids: Sequence[list[int]],
    limits: Sequence[int],
    *,
    adapter: bool = True,
    batch_size: int = 16,
    samples: int = 1,
    temperature: float = 0.0,
) -> list[list[int]]:
    """Continuations of rendered prompts: greedy (``temperature`` 0), or ``samples`` answers to each
    prompt drawn from the model's own distribution at ``temperature`` (no top-k or top-p: a
    reinforcement step needs answers the policy itself would give), ``samples`` rows per prompt in
    prompt order. Prompts go in batches grouped by length, left-padded."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = stop_token_ids(tokenizer, model.generation_config)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    rows: list[list[int]] = [[] for _ in range(len(ids) * samples)]
    sampling: dict[str, Any] = {"do_sample": False}
    if temperature > 0:
        sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
    head = model.get_output_embeddings()
    hook = head.register_forward_pre_hook(_contiguous) if head is not None else None
    per_batch = max(1, batch_size // samples)
    try:
        for start in range(0, len(order), per_batch):
            chunk = order[start : start + per_batch]
            width = max(len(ids[i]) for i in chunk)
            input_ids = torch.tensor([[pad_id] * (width - len(ids[i])) + ids[i] for i in chunk], device=device)
            mask = torch.tensor([[0] * (width - len(ids[i])) + [1] * len(ids[i]) for i in chunk], device=device)
            with torch.no_grad(), autocast(), nullcontext() if adapter else model.disable_adapter():
                generated = model.generate(
                    input_ids=input_ids,
                    attention_mask=mask,
                    max_new_tokens=max(limits[i] for i in chunk),
                    eos_token_id=sorted(stops),
                    pad_token_id=pad_id,
                    num_return_sequences=samples,
                    **sampling,
                )[:, width:]
            out = generated.tolist()
            for k, i in enumerate(chunk):
                for j in range(samples):
                    rows[i * samples + j] = out[k * samples + j][: limits[i]]
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
