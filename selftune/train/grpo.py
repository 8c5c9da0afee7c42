"""Reinforcement fine-tuning (``method: reinforcement``): GRPO, the objective the recipe
(``train.lora``) trains with when a grader, not an answer, says what is good.

A step takes a batch of prompts (the lines of a prompts file: the conversation up to the user's
last message, and the whole line as the grader's ``item``) and

1. **samples** a group of answers to each prompt from the model as it is now (adapter on, the
   model's own distribution at temperature 1, up to ``reasoning_effort``'s token budget): on a
   CPU by llama.cpp with the adapter converted each step (``train.sampling``: a fifth to a third
   faster), else in this process, batched (``train.generate``);
2. **grades** every answer with the job's grader (``selftune.graders.run``, the implementation
   behind ``/graders/run`` and eval runs), all at once; a grader that fails scores 0 and is counted
   in ``grader_error_rate``, never fatal;
3. **trains**: each answer's advantage is its reward minus its group's mean, divided by the
   group's standard deviation (Shao et al., 2024), and the loss of an answer is the mean over its
   tokens (the end-of-turn token included, so ending is learned like any token) of the clipped
   policy-gradient term plus ``kl_beta`` times the KL estimate ``exp(r - p) - (r - p) - 1`` against
   the reference ``r``: the starting model, which is the base with the adapter switched off (no
   second copy of the weights), or an ``ft:`` model's adapter as it was loaded.

With one optimisation pass per sampled batch the ratio of new to old probabilities is 1 where the
gradient is taken, so the clipping bounds nothing yet; it is kept so the loss is GRPO's as written.

``evaluate`` answers validation prompts greedily and reports their mean reward: the job's
``valid_reward_mean``, by which the best checkpoints are chosen.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from pydantic import TypeAdapter

from selftune.data.render import IGNORE, RenderedFile, stop_token_ids
from selftune.graders.run import Context, Graded, grade_answers, no_judge
from selftune.schemas.graders import Grader
from selftune.train.generate import generate_tokens
from selftune.train.judging import TrainingJudge
from selftune.train.sampling import LlamaCppSampler
from selftune.train.step import Rows, StepContext, collate, micro_batches, token_losses

CLIP = 0.2
"""PPO's clipping range for the probability ratio (GRPO's and TRL's default)."""


class Reinforcement:
    """The GRPO objective over a prompts file's lines."""

    columns: tuple[str, ...] = (
        "loss",
        "reward_mean",
        "reward_std",
        "kl",
        "answer_tokens",
        "ended",
        "grader_error_rate",
        "sampling_seconds",
        "grading_seconds",
        "training_seconds",
    )
    headline = ("reward_mean", "reward")

    def __init__(
        self,
        train: RenderedFile,
        valid: RenderedFile,
        tokenizer: Any,
        *,
        grader: dict[str, Any],
        json_answers: bool,
        group: int,
        answer_tokens: int,
        max_len: int,
        kl_beta: float,
        new_adapter: bool,
        hidden: Sequence[str] = (),
        python_timeout: float = 120.0,
    ) -> None:
        self.data = {"train": train, "valid": valid}
        self.tokenizer = tokenizer
        self.grader = TypeAdapter(Grader).validate_python(grader)
        self.json_answers = json_answers
        self.group = group
        self.answer_tokens = answer_tokens
        self.max_len = max_len
        self.kl_beta = kl_beta
        self.new_adapter = new_adapter
        self.grading = Context(no_judge, python_timeout, [Path(h) for h in hidden])
        self.stops: set[int] = set()
        self.start: list[torch.Tensor] | None = None
        """Continuing an ``ft:`` model: its adapter's weights before the first step."""
        self.sampler: LlamaCppSampler | None = None
        """Where llama.cpp samples the steps' answers (``train.sampling``); else this process does."""
        self._judge: TrainingJudge | None = None

    @property
    def judge(self) -> TrainingJudge | None:
        """The judges of ``score_model`` and ``label_model`` graders (``train.judging``)."""
        return self._judge

    @judge.setter
    def judge(self, judge: TrainingJudge | None) -> None:
        self._judge = judge
        self.grading.judge = judge or no_judge

    # --- the data, as the recipe plans and batches it ---------------------------------------------

    def _prompt(self, split: str, i: int) -> list[int]:
        return self.data[split].rows[i][0]

    def _room(self, prompt: list[int]) -> int:
        """The answer's token budget: the effort's, within the sequence limit."""
        return max(1, min(self.answer_tokens, self.max_len - len(prompt)))

    def lengths(self) -> list[int]:
        return [len(ids) + self._room(ids) for ids, _ in self.data["train"].rows]

    def rows(self, split: str, idx: Sequence[int]) -> Rows:
        """What a step puts through the model at most: each prompt's group of answers at full length."""
        out: Rows = []
        for i in idx:
            ids = self._prompt(split, i)
            full = ids + [0] * self._room(ids)
            out += [(full, [IGNORE] * len(full))] * self.group
        return out

    def size(self, split: str) -> int:
        return len(self.data[split].rows)

    def prepare(self, model: Any, ctx: StepContext, saved: dict[str, Any] | None) -> dict[str, Any]:
        """The stop tokens; continuing an ``ft:`` model, its adapter's weights as loaded (the reference),
        which a resumed run takes back from its state."""
        self.stops = stop_token_ids(self.tokenizer, model.generation_config)
        if self.new_adapter:
            return {}
        if saved and "start" in saved:
            self.start = [t.to(ctx.device) for t in saved["start"]]
        else:
            self.start = [p.detach().clone() for p in model.parameters() if p.requires_grad]
        return {"start": [t.cpu() for t in self.start]}

    # --- one step ---------------------------------------------------------------------------------

    def step(
        self, model: Any, idx: Sequence[int], ctx: StepContext, part: Sequence[int], scale: float = 1.0
    ) -> tuple[dict[str, float], int]:
        started = time.perf_counter()
        prompts = [self._prompt("train", i) for i in part]
        if self.sampler is not None:  # the seeds come from torch's generator, which a resumed job restores
            seed = int(torch.randint(0, 2**30, ()))
            limits = [self._room(p) for p in prompts]
            answers = self.sampler.sample(model, prompts, limits, self.group, seed, self.stops)
        else:
            answers = self._sample(model, prompts, ctx, samples=self.group)
        sampled = time.perf_counter()
        texts = [self._text(a) for a in answers]
        graded = self._grade("train", [i for i in part for _ in range(self.group)], texts)
        rewards = torch.tensor([g.reward for g in graded], dtype=torch.float32).view(len(part), self.group)
        advantages = (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-4)
        graded_at = time.perf_counter()

        loss_sum, kl_sum, tokens = self.train_on(model, prompts, answers, advantages.flatten(), ctx, len(idx), scale)
        done = time.perf_counter()
        n = len(idx) * self.group  # the whole batch's answers: shares add up across processes

        ended = [self._ended(a) for a in answers]
        metrics = {
            "loss": loss_sum / n,
            "reward_mean": float(rewards.sum()) / n,
            "reward_std": float(rewards.std(1).sum()) / len(idx) if self.group > 1 else 0.0,
            "kl": kl_sum / n,
            "answer_tokens": sum(len(a) for a in answers) / n,
            "ended": sum(ended) / n,
            "grader_error_rate": sum(g.errored for g in graded) / n,
            "sampling_seconds": sampled - started,
            "grading_seconds": graded_at - sampled,
            "training_seconds": done - graded_at,
        }
        return metrics, tokens

    def train_on(
        self,
        model: Any,
        prompts: list[list[int]],
        answers: list[list[int]],
        advantages: torch.Tensor,
        ctx: StepContext,
        batch_prompts: int,
        scale: float = 1.0,
    ) -> tuple[float, float, int]:
        """Forward and backward over the answers (``group`` per prompt, in order) in micro-batches:
        the gradient of the sum of the answers' losses over the whole batch's answer count
        (``batch_prompts`` times the group). Returns the summed losses, the summed KL and the tokens."""
        rows = [
            (prompts[k // self.group] + a, [IGNORE] * len(prompts[k // self.group]) + a) for k, a in enumerate(answers)
        ]
        n = batch_prompts * self.group  # the whole batch's answers: shares add up across processes
        loss_sum, kl_sum = 0.0, 0.0
        for chunk in micro_batches([len(ids) for ids, _ in rows], ctx.micro_tokens):
            batch = collate([rows[k] for k in chunk], ctx.pad_id, ctx.device)
            reference = self._reference(model, batch, ctx)
            with ctx.autocast():
                losses, _ = token_losses(model, batch, ctx.ce_chunk)
            logp = -losses
            row_of = (batch["labels"][:, 1:] != IGNORE).nonzero()[:, 0]  # positions come row by row
            advantage = advantages[chunk].to(logp.device)[row_of]
            ratio = torch.exp(logp - logp.detach())
            policy = -torch.min(ratio * advantage, torch.clamp(ratio, 1 - CLIP, 1 + CLIP) * advantage)
            delta = reference - logp
            kl = torch.exp(delta) - delta - 1

            losses_of = _per_answer(policy + self.kl_beta * kl, row_of, len(chunk))
            (losses_of.sum() * (scale / n)).backward()
            loss_sum += float(losses_of.detach().sum())
            kl_sum += float(_per_answer(kl.detach(), row_of, len(chunk)).sum())
        return loss_sum, kl_sum, sum(len(ids) for ids, _ in rows)

    def evaluate(
        self, model: Any, split: str, idx: Sequence[int], ctx: StepContext, *, starting: bool = False
    ) -> dict[str, float]:
        """Greedy answers to ``idx`` and their mean reward (the job's ``valid_reward_mean``); of the
        starting model with ``starting`` (the job's own base-versus-fine-tuned comparison)."""
        with self._starting_model(model) if starting else nullcontext():
            answers = self._sample(model, [self._prompt(split, i) for i in idx], ctx, samples=1)
        graded = self._grade(split, list(idx), [self._text(a) for a in answers])
        n = max(1, len(idx))
        return {
            "reward_mean": sum(g.reward for g in graded) / n,
            "answer_tokens": sum(len(a) for a in answers) / n,
            "ended": sum(self._ended(a) for a in answers) / n,
            "grader_error_rate": sum(g.errored for g in graded) / n,
        }

    # --- the parts ----------------------------------------------------------------------------------

    def _sample(self, model: Any, prompts: list[list[int]], ctx: StepContext, samples: int) -> list[list[int]]:
        """Answers cut after their first stop token (kept: it is trained), ``samples`` per prompt in order."""
        model.eval()
        rows = generate_tokens(
            model,
            self.tokenizer,
            ctx.device,
            ctx.autocast,
            prompts,
            [self._room(p) for p in prompts],
            batch_size=max(ctx.batch_size, 16 // samples) * samples,
            samples=samples,
            temperature=1.0 if samples > 1 else 0.0,
        )
        model.train()
        out = []
        for row in rows:
            end = next((k for k, t in enumerate(row) if t in self.stops), None)
            out.append(row if end is None else row[: end + 1])
        return out

    def _ended(self, answer: list[int]) -> bool:
        return bool(answer) and answer[-1] in self.stops

    def _text(self, answer: list[int]) -> str:
        return str(self.tokenizer.decode(answer, skip_special_tokens=True)).strip()

    def _grade(self, split: str, items: list[int], texts: list[str]) -> list[Graded]:
        lines = self.data[split].items
        return grade_answers(
            self.grader, texts, [lines[i] for i in items], self.grading, json_expected=self.json_answers
        )

    def _reference(self, model: Any, batch: dict[str, torch.Tensor], ctx: StepContext) -> torch.Tensor:
        """Per trained token, its log-probability under the starting model."""
        with self._starting_model(model), torch.no_grad(), ctx.autocast():
            losses, _ = token_losses(model, batch, ctx.ce_chunk)
        return -losses

    @contextmanager
    def _starting_model(self, model: Any) -> Iterator[None]:
        """The model as the job started: the adapter switched off, or the ``ft:`` adapter's first weights
        swapped in (a few megabytes) and the trained ones put back after."""
        if self.start is None:
            with model.disable_adapter():
                yield
            return
        params = [p for p in model.parameters() if p.requires_grad]
        current = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, t in zip(params, self.start, strict=True):
                p.copy_(t)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, t in zip(params, current, strict=True):
                    p.copy_(t)


def _per_answer(values: torch.Tensor, row_of: torch.Tensor, rows: int) -> torch.Tensor:
    """The mean of each answer's per-token ``values`` (positions come row by row); 0 for an empty
    answer (llama.cpp can end one on a token it does not name: see ``train.sampling``)."""
    zeros = torch.zeros(rows, device=values.device, dtype=values.dtype)
    counts = zeros.index_add(0, row_of, torch.ones_like(values))
    return zeros.index_add(0, row_of, values) / counts.clamp(min=1)
