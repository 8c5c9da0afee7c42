"""Direct preference optimisation (``method: dpo``): the loss, the reference model's scores, and the
objective the recipe (``train.lora``) trains with.

A preference line becomes two rows (``data.render.render_preference``): the input followed by the
preferred output, and by the non-preferred one, with only the output's tokens trained. A row's
score is the sum of the log-probabilities of those tokens. With the same scores under the
reference model, the loss of a pair is (Rafailov et al., 2023)::

    loss = -log sigmoid(beta * ((policy_preferred - reference_preferred)
                                - (policy_non_preferred - reference_non_preferred)))

``beta * (policy - reference)`` is a completion's implicit reward: ``reward_accuracy`` is the share
of pairs whose preferred output has the higher reward, ``reward_margin`` the mean difference.

The reference model is the starting model: the base with the new adapter switched off (so no
second copy of the weights is loaded), or the ``ft:`` model a job continues from (its adapter as
loaded, before the first step). Its scores are computed once per example before training and kept
in the resumable state, so a resumed run uses the very same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch

from selftune.train.step import Rows, StepContext, collate, micro_batches, sequence_sums, trained_count


def dpo_loss(
    policy_preferred: torch.Tensor,
    policy_non_preferred: torch.Tensor,
    reference_preferred: torch.Tensor,
    reference_non_preferred: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per pair: the DPO loss, and the implicit rewards of the preferred and non-preferred outputs."""
    preferred = beta * (policy_preferred - reference_preferred)
    non_preferred = beta * (policy_non_preferred - reference_non_preferred)
    losses = -torch.nn.functional.logsigmoid(preferred - non_preferred)
    return losses, preferred.detach(), non_preferred.detach()


class Preference:
    """The DPO objective over preference pairs (rows ``2k`` and ``2k + 1`` of each split)."""

    columns: tuple[str, ...] = ("loss", "mean_token_accuracy", "reward_accuracy", "reward_margin")
    """``mean_token_accuracy`` is that of the preferred outputs: how well the model predicts them."""
    headline = ("loss", "loss")

    def __init__(self, train: Rows, valid: Rows, beta: float, rpo_alpha: float, *, new_adapter: bool) -> None:
        self.data = {"train": train, "valid": valid}
        self.pair_lengths = {
            split: [max(len(rows[2 * k][0]), len(rows[2 * k + 1][0])) for k in range(len(rows) // 2)]
            for split, rows in self.data.items()
        }
        """Per split, each pair's longer row: what a micro-batch of pairs pads to."""
        self.beta = beta
        self.rpo_alpha = rpo_alpha
        self.new_adapter = new_adapter
        self.reference: dict[str, torch.Tensor] = {}
        """Per split, ``[pairs, 2]``: the reference scores of each pair's preferred and non-preferred output."""

    def lengths(self) -> list[int]:
        return self.pair_lengths["train"]

    def rows(self, split: str, idx: Sequence[int]) -> Rows:
        rows = self.data[split]
        return [rows[2 * i + j] for i in idx for j in (0, 1)]

    def size(self, split: str) -> int:
        return len(self.data[split]) // 2

    def prepare(self, model: Any, ctx: StepContext, saved: dict[str, Any] | None) -> dict[str, Any]:
        if saved and "reference" in saved:
            self.reference = {k: torch.tensor(v, dtype=torch.float32) for k, v in saved["reference"].items()}
        else:
            # A new adapter starts as a no-op, so the base is the starting model; switching it off
            # skips its arithmetic. An ft: model's adapter is part of the starting model: keep it.
            off = model.disable_adapter() if self.new_adapter and hasattr(model, "disable_adapter") else nullcontext()
            model.eval()
            with off, torch.no_grad():
                for split in self.data:
                    chunks = _chunks(range(self.size(split)), ctx.batch_size)
                    scores = [self._scores(model, split, chunk, ctx)[0] for chunk in chunks]
                    self.reference[split] = torch.cat(scores).float().cpu() if scores else torch.zeros((0, 2))
            model.train()
        return {"reference": {k: v.tolist() for k, v in self.reference.items()}}

    def _scores(
        self, model: Any, split: str, idx: Sequence[int], ctx: StepContext
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[len(idx), 2]`` scores of the pairs ``idx`` (with gradients unless under ``no_grad``),
        and the preferred outputs' right-predicted and trained token counts."""
        batch = collate(self.rows(split, idx), ctx.pad_id, ctx.device)
        with ctx.autocast():
            logps, right, count = sequence_sums(model, batch, ctx.ce_chunk)
        return logps.view(-1, 2), right[0::2], count[0::2]

    def step(
        self, model: Any, idx: Sequence[int], ctx: StepContext, part: Sequence[int], scale: float = 1.0
    ) -> tuple[dict[str, float], int]:
        """Micro-batches of whole pairs (the loss needs both scores of a pair); each adds its pairs'
        loss divided by the batch's pair count, so the accumulated gradient is the whole batch's."""
        lengths = self.pair_lengths["train"]
        sums = _Sums()
        for group in micro_batches([lengths[i] for i in part], max(1, ctx.micro_tokens // 2)):
            sub = [part[j] for j in group]
            scores, right, count = self._scores(model, "train", sub, ctx)
            losses = sums.add(self, scores, self.reference["train"][sub].to(scores.device), right, count)
            (losses.sum() / len(idx) if scale == 1.0 else losses.sum() * (scale / len(idx))).backward()
        preferred = self.rows("train", idx)[0::2]
        metrics = sums.metrics(pairs=len(idx), count=trained_count(preferred))
        return metrics, sum(len(ids) for ids, _ in self.rows("train", part))

    def evaluate(self, model: Any, split: str, idx: Sequence[int], ctx: StepContext) -> dict[str, float]:
        model.eval()
        sums = _Sums()
        with torch.no_grad():
            for sub in _chunks(idx, ctx.batch_size):
                scores, right, count = self._scores(model, split, sub, ctx)
                sums.add(self, scores, self.reference[split][sub].to(scores.device), right, count)
        model.train()
        return sums.metrics()


def _chunks(idx: Sequence[int], size: int) -> list[list[int]]:
    return [list(idx[k : k + size]) for k in range(0, len(idx), size)]


class _Sums:
    """Running totals of a step's or an evaluation's pairs."""

    def __init__(self) -> None:
        self.loss = self.wins = self.margin = self.right = self.count = 0.0
        self.pairs = 0

    def add(
        self,
        objective: Preference,
        scores: torch.Tensor,
        reference: torch.Tensor,
        right: torch.Tensor,
        count: torch.Tensor,
    ) -> torch.Tensor:
        losses, preferred, non_preferred = dpo_loss(
            scores[:, 0], scores[:, 1], reference[:, 0], reference[:, 1], objective.beta
        )
        if objective.rpo_alpha:  # the anchor: the preferred output's mean next-token loss
            losses = losses - objective.rpo_alpha * scores[:, 0] / count.clamp(min=1)
        self.loss += float(losses.detach().sum())
        self.wins += float((preferred > non_preferred).sum())
        self.margin += float((preferred - non_preferred).sum())
        self.right += float(right.sum())
        self.count += float(count.sum())
        self.pairs += int(scores.shape[0])
        return losses

    def metrics(self, pairs: int | None = None, count: int | None = None) -> dict[str, float]:
        """Means over these pairs, or (a process's share of a batch) over the batch's ``pairs`` and
        preferred-output ``count``."""
        n = max(1, self.pairs if pairs is None else pairs)
        return {
            "loss": self.loss / n,
            "mean_token_accuracy": self.right / max(1.0, self.count if count is None else count),
            "reward_accuracy": self.wins / n,
            "reward_margin": self.margin / n,
        }
