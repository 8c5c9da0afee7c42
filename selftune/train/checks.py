"""What the recipe checks and reports after training: the smoke test and the base-vs-fine-tuned evaluation.

Both are reports, never reasons to fail a job: each returns the events to emit. The evaluation
imports ``selftune.eval`` (and the embedding model it may load) only when the job asks for it,
so a job without a validation file never pays for it.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import torch

from selftune.atomic import write_atomic
from selftune.data.render import Prompt, stop_token_ids
from selftune.train.generate import generate_answers, greedy_tokens
from selftune.train.protocol import Message, TrainConfig


def smoke_prompt(path: str) -> tuple[Prompt, str] | None:
    """The first training conversation cut before its last assistant message, and that message
    (of a preference line: its input, and the preferred output; of a prompt/completion line, both)."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                example = json.loads(line)
                if "completion" in example and "messages" not in example:
                    return str(example.get("prompt", "")), str(example["completion"])
                if "messages" not in example:
                    return example["input"]["messages"], str(example["preferred_output"][0].get("content") or "")
                messages = example["messages"]
                last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
                if last:
                    return messages[:last], str(messages[last].get("content") or "")
    return None


def smoke_test(model: Any, tokenizer: Any, device: torch.device, autocast: Any, cfg: TrainConfig) -> list[Message]:
    """Does the model end its turn? One that never emits end-of-turn rambles to max_tokens on every
    request: warn about it here, on the first training prompt."""
    smoke = smoke_prompt(cfg.train_file)
    if smoke is None:
        return []
    model.eval()
    prompt, expected = smoke
    limit = 2 * len(tokenizer(expected)["input_ids"]) + 32
    stops = stop_token_ids(tokenizer, model.generation_config)
    generated = greedy_tokens(model, tokenizer, device, autocast, [prompt], [limit])[0]
    if stops.intersection(generated):
        return []
    return [
        Message(
            f"Smoke test: the fine-tuned model did not end its answer within {limit} tokens on the first "
            "training example, so it may ramble until max_tokens. Train for more epochs, or check that "
            "examples end with an assistant message.",
            level="warn",
        )
    ]


def evaluate_job(model: Any, tokenizer: Any, device: torch.device, autocast: Any, cfg: TrainConfig) -> list[Message]:
    """Base against fine-tuned on up to ``eval_examples`` validation examples, written as eval.json
    and eval.html. Both models are already loaded (the base is the same weights with the adapter
    switched off), so this costs generation time only. A failure is reported, never raised."""
    if not cfg.valid_file or cfg.eval_examples <= 0:
        return []
    try:
        from selftune.eval import evaluate, load_examples
        from selftune.eval.report import to_html, to_json

        examples = load_examples(cfg.valid_file, limit=cfg.eval_examples, filename="validation file")
        limits = [min(256, 3 * len(tokenizer(ex.reference)["input_ids"]) // 2 + 32) for ex in examples]
        model.eval()
        answer = partial(generate_answers, model, tokenizer, device, autocast, limits)
        report = evaluate(
            examples,
            {cfg.base_model_name: partial(answer, False), cfg.model_name: partial(answer, True)},
            data=cfg.valid_name or Path(cfg.valid_file).name,
            seed=cfg.seed,
        )
        write_atomic(cfg.job_dir.eval_json, to_json(report))
        write_atomic(cfg.job_dir.eval_html, to_html(report))
        return [Message(report.summary())]
    except Exception as e:
        return [Message(f"Evaluation skipped: {type(e).__name__}: {e}", level="warn")]
