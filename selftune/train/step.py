"""One training step's arithmetic: batches, micro-batches, and the loss over the vocabulary in chunks.

The recipe (``train.lora``) calls ``accumulate`` once per optimizer step. It splits the batch into
the memory plan's micro-batches (``train.memory``), runs forward and backward on each with the loss
divided by the whole batch's trained-token count, so the accumulated gradient is the one-batch
gradient, and returns the batch's mean loss and accuracy.

The cross-entropy only ever sees trained positions (prompts and padding never reach the vocabulary
projection), and it sees them a chunk at a time: ``ChunkedCrossEntropy`` computes each chunk's
logits, its loss and the gradient with respect to its hidden states in one go, and keeps only that
gradient (positions x hidden), never the logits (positions x vocabulary). The output projection is
frozen under LoRA, so no weight gradient is needed, and nothing is recomputed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import torch

from selftune.data.render import IGNORE
from selftune.train.memory import micro_batches

Rows = list[tuple[list[int], list[int]]]


def batches(examples: Rows, batch_size: int, rng: random.Random) -> list[list[int]]:
    """Index batches for one epoch: shuffled, then grouped by length inside windows of 50 batches,
    so each batch pads to a similar length while the order stays random. Rows in a batch are in
    length order, so micro-batches cut from it pad little."""
    order = list(range(len(examples)))
    rng.shuffle(order)
    window = batch_size * 50
    out: list[list[int]] = []
    for w in range(0, len(order), window):
        chunk = sorted(order[w : w + window], key=lambda i: len(examples[i][0]))
        out.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(out)
    return out


def collate(rows: Rows, pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (ids, lab) in enumerate(rows):
        input_ids[r, : len(ids)] = torch.tensor(ids)
        labels[r, : len(lab)] = torch.tensor(lab)
        mask[r, : len(ids)] = 1
    return {"input_ids": input_ids.to(device), "labels": labels.to(device), "attention_mask": mask.to(device)}


def trained_count(rows: Rows) -> int:
    """Positions with a loss: every label but the first (nothing predicts it) that is not IGNORE."""
    return sum(sum(1 for lab in labels[1:] if lab != IGNORE) for _, labels in rows)


class ChunkedCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of ``hidden @ weight.T`` against ``target``, a chunk of positions at a
    time, and the number of positions predicted right. Backward returns the gradient computed in
    forward (softmax minus one-hot, times the weight), scaled by the incoming gradient."""

    @staticmethod
    def forward(
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, chunk: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        correct = torch.zeros((), dtype=torch.long, device=hidden.device)
        grad = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        for s in range(0, hidden.shape[0], chunk):
            t = target[s : s + chunk]
            logits = (hidden[s : s + chunk] @ weight.t()).float()
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            correct += (logits.argmax(-1) == t).sum()
            if grad is not None:
                probs = torch.exp(logits.sub_(lse[:, None]))  # softmax, in place of the logits
                probs[torch.arange(t.shape[0], device=t.device), t] -= 1
                grad[s : s + chunk] = (probs.to(weight.dtype) @ weight).to(grad.dtype)
                del probs
            del logits
        ctx.save_for_backward(grad if grad is not None else hidden.new_empty(0))
        ctx.mark_non_differentiable(correct)
        return total, correct

    @staticmethod
    def backward(ctx: Any, grad_total: torch.Tensor, _grad_correct: torch.Tensor) -> tuple[Any, ...]:
        (grad,) = ctx.saved_tensors
        return grad * grad_total.to(grad.dtype), None, None, None


def loss_sums(model: Any, batch: dict[str, torch.Tensor], ce_chunk: int) -> tuple[torch.Tensor, int, int]:
    """Summed cross-entropy over the trained tokens of ``batch``, how many were predicted right, and
    their count."""
    labels = batch["labels"][:, 1:]
    trained = labels != IGNORE
    target = labels[trained]
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    if _plain_lm_head(causal):
        hidden = causal.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        head = causal.get_output_embeddings()
        total, correct = ChunkedCrossEntropy.apply(
            hidden.last_hidden_state[:, :-1][trained], head.weight, target, ce_chunk
        )
    else:  # heads that scale or cap their logits: take them from the model itself
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logits = full[:, :-1][trained].float()
        total = torch.nn.functional.cross_entropy(logits, target, reduction="sum")
        correct = (logits.argmax(-1) == target).sum()
    return total, int(correct), int(target.numel())


def _plain_lm_head(causal: Any) -> bool:
    """Whether logits are just ``lm_head(decoder(x))`` with no bias, as in Llama, Qwen, Gemma 3 and SmolLM."""
    config = causal.config
    scaled = any(getattr(config, k, None) not in (None, 1, 1.0) for k in ("final_logit_softcapping", "logit_scale"))
    head = causal.get_output_embeddings() if hasattr(causal, "get_output_embeddings") else None
    return not scaled and hasattr(causal, "get_decoder") and head is not None and getattr(head, "bias", None) is None


def accumulate(
    model: Any,
    rows: Rows,
    pad_id: int,
    device: torch.device,
    autocast: Callable[[], Any],
    micro_tokens: int,
    ce_chunk: int,
) -> tuple[float, float, int]:
    """Forward and backward over ``rows`` in micro-batches; the gradients add up to the one-batch
    gradient of the mean loss. Returns the batch's mean loss, accuracy, and tokens (padding excluded)."""
    n = max(1, trained_count(rows))
    loss, correct = 0.0, 0
    for group in micro_batches([len(ids) for ids, _ in rows], micro_tokens):
        batch = collate([rows[i] for i in group], pad_id, device)
        with autocast():
            total, right, _ = loss_sums(model, batch, ce_chunk)
        (total / n).backward()
        loss += float(total)
        correct += right
    return loss / n, correct / n, sum(len(ids) for ids, _ in rows)


def evaluate(
    model: Any,
    examples: Rows,
    batch_size: int,
    pad_id: int,
    device: torch.device,
    autocast: Callable[[], Any],
    ce_chunk: int,
) -> tuple[float, float]:
    """Mean loss and accuracy over ``examples``, without gradients."""
    model.eval()
    total_loss, total_correct, total_n = 0.0, 0, 0
    with torch.no_grad(), autocast():
        for i in range(0, len(examples), batch_size):
            total, right, n = loss_sums(model, collate(examples[i : i + batch_size], pad_id, device), ce_chunk)
            total_loss += float(total)
            total_correct += right
            total_n += n
    model.train()
    return total_loss / max(1, total_n), total_correct / max(1, total_n)
