"""What the recipe checks and reports after training: the quality guard and the base-vs-fine-tuned evaluation.

Both come from one generation pass. The base (the same weights with the adapter switched off) and
the fine-tuned model answer the same held-out prompts greedily: the validation file's first
examples, else a seeded sample of the training file's. The guard (``selftune.eval.quality``)
judges every answer by its text and whether it ended; with a validation file, the same answers
are scored against the references as ``eval.json`` and ``eval.html`` (``selftune.eval``).

These are reports, never reasons to fail a job: ``check_job`` returns the events to emit and the
guard's finding, which becomes the job's ``quality``. The embedding model the evaluation may load
is loaded only when the job has a validation file.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch

from selftune.atomic import write_atomic
from selftune.data.render import stop_token_ids
from selftune.eval.core import Example, Tick, example_from, load_examples
from selftune.eval.quality import Answer, Quality, assess
from selftune.methods import MethodType, answer_tokens
from selftune.train.generate import greedy_tokens
from selftune.train.protocol import Message, TrainConfig

MAX_ANSWER_TOKENS = 256


def answer_limit(tokenizer: Any, reference: str) -> int:
    """Room for an answer half again as long as the reference, and 32 tokens more."""
    return min(MAX_ANSWER_TOKENS, 3 * len(tokenizer(reference)["input_ids"]) // 2 + 32)


def sample_training_prompts(path: str, limit: int, seed: int, name: str) -> list[Example]:
    """Up to ``limit`` training examples, chosen by the job's seed (reservoir sampling, one pass)."""
    rng = random.Random(seed)
    chosen: list[tuple[int, str]] = []
    with open(path, encoding="utf-8-sig") as f:
        seen = 0
        for line_no, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            seen += 1
            if len(chosen) < limit:
                chosen.append((line_no, raw))
            elif (k := rng.randrange(seen)) < limit:
                chosen[k] = (line_no, raw)
    return [example_from(json.loads(raw), line_no, name) for line_no, raw in sorted(chosen)]


class Answers:
    """Greedy answers of the base (``adapter=False``) or the fine-tuned model, up to each prompt's
    limit, kept with whether each ended: an evaluation ``Answerer`` that also feeds the guard."""

    def __init__(
        self, model: Any, tokenizer: Any, device: torch.device, autocast: Any, limits: list[int], adapter: bool
    ) -> None:
        self.model, self.tokenizer, self.device, self.autocast = model, tokenizer, device, autocast
        self.limits, self.adapter = limits, adapter
        self.answers: list[Answer] = []
        """The last call's answers."""

    def __call__(self, prompts: Any, tick: Tick) -> list[str]:
        stops = stop_token_ids(self.tokenizer, self.model.generation_config)
        rows = greedy_tokens(self.model, self.tokenizer, self.device, self.autocast, prompts, self.limits, self.adapter)
        self.answers = []
        for row in rows:
            end = next((k for k, t in enumerate(row) if t in stops), None)
            text = self.tokenizer.decode(row[: len(row) if end is None else end], skip_special_tokens=True)
            self.answers.append(Answer(text.strip(), end is not None))
            tick()
        return [a.text for a in self.answers]


def check_job(
    model: Any,
    tokenizer: Any,
    device: torch.device,
    autocast: Any,
    cfg: TrainConfig,
    best: str | None,
    best_is_final: bool,
) -> tuple[list[Message], Quality | None]:
    """Ask both models the held-out prompts; judge the answers and, with a validation file, score
    them. ``best``: the checkpoint with the lowest validation loss (None without a validation file),
    which a warning recommends unless it is the final model itself."""
    events: list[Message] = []
    if cfg.quality_prompts <= 0:
        return [], None
    try:
        if cfg.valid_file:
            limit = max(cfg.quality_prompts, cfg.eval_examples)
            examples = load_examples(cfg.valid_file, limit=limit, filename="validation file")
            source = "validation file"
        else:
            examples = sample_training_prompts(
                cfg.train_file, cfg.quality_prompts, cfg.seed, cfg.train_name or "training file"
            )
            source = "training file"
    except Exception as e:
        return [Message(f"Quality check skipped: {type(e).__name__}: {e}", level="warn")], None
    if not examples:
        return [], None
    model.eval()
    rft = cfg.method == MethodType.REINFORCEMENT  # its prompts have no reference: the grader was the judge
    room = answer_tokens(cfg.hyperparameters.reasoning_effort)
    limits = [room if rft else answer_limit(tokenizer, ex.reference) for ex in examples]
    base = Answers(model, tokenizer, device, autocast, limits, adapter=False)
    tuned = Answers(model, tokenizer, device, autocast, limits, adapter=True)
    if cfg.valid_file and cfg.eval_examples > 0 and not rft:
        events += _evaluate(examples, base, tuned, cfg)
    if not tuned.answers:  # no evaluation, or it failed before the fine-tuned model answered
        prompts = [ex.prompt for ex in examples]
        base(prompts, lambda: None)
        tuned(prompts, lambda: None)
    quality = assess(base.answers, tuned.answers, source, best, suggest_best=not best_is_final)
    events.insert(0, Message(quality.message, level="warn" if quality.verdict != "ok" else "info"))
    return events, quality


def _evaluate(examples: list[Example], base: Answers, tuned: Answers, cfg: TrainConfig) -> list[Message]:
    """The evaluation report from the guard's answers (its first ``eval_examples``), written as
    eval.json and eval.html; a failure is reported, never raised."""
    try:
        from selftune.eval import evaluate
        from selftune.eval.report import to_html, to_json

        report = evaluate(
            examples,
            {cfg.base_model_name: base, cfg.model_name: tuned},
            data=cfg.valid_name or Path(str(cfg.valid_file)).name,
            seed=cfg.seed,
        )
        write_atomic(cfg.job_dir.eval_json, to_json(report))
        write_atomic(cfg.job_dir.eval_html, to_html(report))
        return [Message(report.summary())]
    except Exception as e:
        return [Message(f"Evaluation skipped: {type(e).__name__}: {e}", level="warn")]
