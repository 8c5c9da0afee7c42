"""One training step's arithmetic: batches, micro-batches, and the loss over the vocabulary in chunks.

The recipe (``train.lora``) trains an ``Objective``: ``NextToken`` here (supervised), or DPO's
(``train.dpo``), which builds on the same pieces. ``NextToken`` calls ``accumulate`` once per
optimizer step. It splits the batch into
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from selftune.data.render import IGNORE

Rows = list[tuple[list[int], list[int]]]


@dataclass(frozen=True)
class StepContext:
    """What every step needs besides the model and the data: where and how to compute."""

    pad_id: int
    device: torch.device
    autocast: Callable[[], Any]
    micro_tokens: int
    ce_chunk: int
    batch_size: int
    """For evaluation passes (no gradients, so any size fits that training fits)."""


class Objective(Protocol):
    """What the recipe trains: the data as examples, one optimizer step's forward and backward, and
    an evaluation. ``NextToken`` (supervised) and ``train.dpo.Preference`` (DPO) are the two; the
    recipe's loop, checkpoints, pause and resume are the same for both.

    Metrics are plain names (``loss``, ``mean_token_accuracy``, ...); the recipe prefixes them with
    ``train_``, ``valid_`` or ``full_valid_`` as OpenAI's metrics events do."""

    columns: tuple[str, ...]
    """The metrics this objective reports, in the result CSV's column order."""
    headline: tuple[str, str]
    """The metric each step's message shows, and its name there."""

    def lengths(self) -> list[int]:
        """Each training example's length, for batching."""
        ...

    def rows(self, split: str, idx: Sequence[int]) -> Rows:
        """The rows that ``idx`` of ``split`` (train or valid) go through the model as."""
        ...

    def size(self, split: str) -> int: ...

    def prepare(self, model: Any, ctx: StepContext, saved: dict[str, Any] | None) -> dict[str, Any]:
        """Anything computed once before the first step (or taken back from a resumed state); what it
        returns is saved with the resumable state."""
        ...

    def step(
        self, model: Any, idx: Sequence[int], ctx: StepContext, part: Sequence[int], scale: float = 1.0
    ) -> tuple[dict[str, float], int]:
        """Forward and backward over ``part``, this process's share of the batch ``idx`` (all of it on
        one process): the gradient and the metrics of the whole batch's mean loss, as far as ``part``
        contributes to them (divided by the whole batch's count, so shares add up across processes),
        and the tokens of ``part``. ``scale`` multiplies the loss before backward (0: a pass that
        contributes nothing, for a sharded rank whose share is empty)."""
        ...

    def evaluate(self, model: Any, split: str, idx: Sequence[int], ctx: StepContext) -> dict[str, float]: ...


class NextToken:
    """Supervised fine-tuning: the mean cross-entropy of the trained tokens of every example."""

    columns: tuple[str, ...] = ("loss", "mean_token_accuracy")
    headline = ("loss", "loss")

    def __init__(self, train: Rows, valid: Rows) -> None:
        self.data = {"train": train, "valid": valid}

    def lengths(self) -> list[int]:
        return [len(ids) for ids, _ in self.data["train"]]

    def rows(self, split: str, idx: Sequence[int]) -> Rows:
        return [self.data[split][i] for i in idx]

    def size(self, split: str) -> int:
        return len(self.data[split])

    def prepare(self, model: Any, ctx: StepContext, saved: dict[str, Any] | None) -> dict[str, Any]:
        return {}

    def step(
        self, model: Any, idx: Sequence[int], ctx: StepContext, part: Sequence[int], scale: float = 1.0
    ) -> tuple[dict[str, float], int]:
        rows = self.rows("train", part)
        n = trained_count(self.rows("train", idx))
        loss, accuracy, tokens = accumulate(
            model, rows, ctx.pad_id, ctx.device, ctx.autocast, ctx.micro_tokens, ctx.ce_chunk, n, scale
        )
        return {"loss": loss, "mean_token_accuracy": accuracy}, tokens

    def evaluate(self, model: Any, split: str, idx: Sequence[int], ctx: StepContext) -> dict[str, float]:
        rows = self.rows(split, idx)
        loss, accuracy = evaluate(model, rows, ctx.batch_size, ctx.pad_id, ctx.device, ctx.autocast, ctx.ce_chunk)
        return {"loss": loss, "mean_token_accuracy": accuracy}


def batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Index batches for one epoch of examples of these lengths: shuffled, then grouped by length
    inside windows of 50 batches, so each batch pads to a similar length while the order stays
    random. Examples in a batch are in length order, so micro-batches cut from it pad little."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * 50
    out: list[list[int]] = []
    for w in range(0, len(order), window):
        chunk = sorted(order[w : w + window], key=lambda i: lengths[i])
        out.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(out)
    return out


def plan_epochs(lengths: list[int], n_epochs: int, batch_size: int, seed: int) -> list[tuple[int, list[int]]]:
    """The whole run's (epoch, batch) sequence, fixed by the seed up front: every epoch visits each
    example once, in its own shuffled order."""
    rng = random.Random(seed)
    return [(epoch, idx) for epoch in range(n_epochs) for idx in batches(lengths, batch_size, rng)]


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
    """Cross-entropy of ``hidden @ weight.T`` against ``target`` at each position, a chunk of
    positions at a time, and whether each position was predicted right. Backward returns the
    gradient computed in forward (softmax minus one-hot, times the weight), scaled per position by
    the incoming gradient: 1/n for a mean loss, a pair's weight for DPO."""

    @staticmethod
    def forward(
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, chunk: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        losses = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        correct = torch.empty(hidden.shape[0], dtype=torch.bool, device=hidden.device)
        grad = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        for s in range(0, hidden.shape[0], chunk):
            t = target[s : s + chunk]
            logits = (hidden[s : s + chunk] @ weight.t()).float()
            lse = torch.logsumexp(logits, dim=-1)
            losses[s : s + chunk] = lse - logits.gather(1, t[:, None]).squeeze(1)
            correct[s : s + chunk] = logits.argmax(-1) == t
            if grad is not None:
                probs = torch.exp(logits.sub_(lse[:, None]))  # softmax, in place of the logits
                probs[torch.arange(t.shape[0], device=t.device), t] -= 1
                grad[s : s + chunk] = (probs.to(weight.dtype) @ weight).to(grad.dtype)
                del probs
            del logits
        ctx.save_for_backward(grad if grad is not None else hidden.new_empty(0))
        ctx.mark_non_differentiable(correct)
        return losses, correct

    @staticmethod
    def backward(ctx: Any, grad_losses: torch.Tensor, _grad_correct: torch.Tensor) -> tuple[Any, ...]:
        (grad,) = ctx.saved_tensors
        return grad * grad_losses[:, None].to(grad.dtype), None, None, None


def token_losses(model: Any, batch: dict[str, torch.Tensor], ce_chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The cross-entropy at every trained position of ``batch`` (float32, row by row), and whether
    each was predicted right."""
    labels = batch["labels"][:, 1:]
    trained = labels != IGNORE
    target = labels[trained]
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    if _plain_lm_head(causal):
        hidden = causal.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        head = causal.get_output_embeddings()
        losses, correct = ChunkedCrossEntropy.apply(
            hidden.last_hidden_state[:, :-1][trained], head.weight, target, ce_chunk
        )
    else:  # heads that scale or cap their logits: take them from the model itself
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logits = full[:, :-1][trained].float()
        losses = torch.nn.functional.cross_entropy(logits, target, reduction="none")
        correct = logits.argmax(-1) == target
    return losses, correct


def loss_sums(model: Any, batch: dict[str, torch.Tensor], ce_chunk: int) -> tuple[torch.Tensor, int, int]:
    """Summed cross-entropy over the trained tokens of ``batch``, how many were predicted right, and
    their count."""
    losses, correct = token_losses(model, batch, ce_chunk)
    return losses.sum(), int(correct.sum()), int(losses.numel())


def sequence_sums(
    model: Any, batch: dict[str, torch.Tensor], ce_chunk: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row of ``batch``: the log-probability of its trained tokens (differentiable), how many of
    them were predicted right, and how many there are."""
    losses, correct = token_losses(model, batch, ce_chunk)
    row_of = (batch["labels"][:, 1:] != IGNORE).nonzero()[:, 0]  # positions come row by row
    n_rows = batch["input_ids"].shape[0]
    logps = torch.zeros(n_rows, dtype=torch.float32, device=losses.device).index_add(0, row_of, -losses)
    right = torch.zeros(n_rows, device=losses.device).index_add_(0, row_of, correct.float())
    count = torch.zeros(n_rows, device=losses.device).index_add_(0, row_of, torch.ones_like(losses))
    return logps, right, count


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
    n: int | None = None,
    scale: float = 1.0,
) -> tuple[float, float, int]:
    """Forward and backward over ``rows`` in micro-batches; the gradients add up to the one-batch
    gradient of the mean loss. Returns the batch's mean loss, accuracy, and tokens (padding excluded).
    ``n``: the trained-token count to divide by, when ``rows`` are one process's share of a larger batch."""
    n = max(1, trained_count(rows) if n is None else n)
    loss, correct = 0.0, 0
    for group in micro_batches([len(ids) for ids, _ in rows], micro_tokens):
        batch = collate([rows[i] for i in group], pad_id, device)
        with autocast():
            total, right, _ = loss_sums(model, batch, ce_chunk)
        (total / n if scale == 1.0 else total * (scale / n)).backward()
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


def micro_batches(lengths: list[int], micro_tokens: int) -> list[list[int]]:
    """Split a batch (row lengths, in order) into runs of rows whose padded size fits ``micro_tokens``."""
    out: list[list[int]] = []
    current: list[int] = []
    width = 0
    for i, n in enumerate(lengths):
        if current and max(width, n) * (len(current) + 1) > micro_tokens:
            out.append(current)
            current, width = [], 0
        current.append(i)
        width = max(width, n)
    if current:
        out.append(current)
    return out
