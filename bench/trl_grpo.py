"""One TRL ``GRPOTrainer`` run, in its own process so its time and memory are its own.

    python -m bench.trl_grpo CONFIG.json RESULT.json

CONFIG: ``base_model_dir``, ``train_file`` (a selftune prompts file: each line's messages end with
the user's, other keys are the grader's ``item``), ``output_dir``, ``grader`` (an OpenAI grader,
the reward function here), ``settings`` (``learning_rate``, ``epochs``, ``batch_size`` in prompts,
``group``, ``answer_tokens``, ``beta``), ``lora`` (r, alpha, targets), ``seed``, ``bf16``.

TRL is set to selftune's GRPO as written in ``selftune.train.grpo``: the same group of answers per
prompt at temperature 1 with no top-k or top-p, group-normalised advantages, the loss averaged over
each answer's tokens and then over answers (``loss_type="grpo"``), PPO's clip 0.2, the KL anchor's
weight, one optimisation pass per sampled batch, and the LoRA's reference being the adapter switched
off, as TRL does with a PEFT model. The reward is the same grader run by selftune's own grading code,
so both trainers chase the same number.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench.trl_sft import peft_lora, train_and_save


def grader_reward(grader: dict[str, Any], item_keys: list[str]) -> Any:
    """The grader as a TRL reward function: ``(completions, **columns) -> rewards``, each answer's
    ``item`` being its line's ``item_keys`` (TRL passes its own keyword arguments beside them), graded
    by the code a reinforcement step grades with."""
    from pydantic import TypeAdapter

    from selftune.graders.run import Context, grade_answers, no_judge
    from selftune.schemas.graders import Grader

    parsed, context = TypeAdapter(Grader).validate_python(grader), Context(no_judge, 120.0, [])

    def reward(completions: list[Any], **columns: Any) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else str(c) for c in completions]
        items = [{k: columns[k][i] for k in item_keys} for i in range(len(texts))]
        return [g.reward for g in grade_answers(parsed, texts, items, context)]

    reward.__name__ = "grader"
    return reward


def main(cfg: dict[str, Any]) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    rows = []
    with open(cfg["train_file"], encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            rows.append({"prompt": row.pop("messages"), **row})
    s = cfg["settings"]
    tokenizer = AutoTokenizer.from_pretrained(cfg["base_model_dir"])
    model = AutoModelForCausalLM.from_pretrained(cfg["base_model_dir"], dtype=torch.float32)
    args = GRPOConfig(
        output_dir=cfg["output_dir"],
        save_strategy="no",
        report_to=[],
        seed=cfg["seed"],
        use_cpu=not torch.cuda.is_available(),
        bf16=bool(cfg["bf16"]),
        logging_steps=1,
        disable_tqdm=True,
        learning_rate=s["learning_rate"],
        num_train_epochs=s["epochs"],
        per_device_train_batch_size=s["batch_size"] * s["group"],  # TRL counts answers, not prompts
        gradient_accumulation_steps=1,
        num_generations=s["group"],
        max_completion_length=s["answer_tokens"],
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=s["beta"],
        epsilon=0.2,
        loss_type="grpo",
        scale_rewards="group",
        num_iterations=1,
        lr_scheduler_type="linear",
        warmup_steps=0.05,  # a fraction of the steps, as in selftune
        weight_decay=0.0,
        max_grad_norm=1.0,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=grader_reward(cfg["grader"], sorted(set(rows[0]) - {"prompt"})),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=peft_lora(cfg["lora"]),
    )
    seconds, adapter = train_and_save(trainer, cfg["output_dir"])
    logged = [h for h in trainer.state.log_history if "reward" in h]
    return {
        "seconds": seconds,
        "steps": trainer.state.global_step,
        "adapter": str(adapter),
        "train_reward": [h["reward"] for h in logged],
        "settings": {**s, "loss_type": "grpo", "trl": __import__("trl").__version__},
    }


if __name__ == "__main__":
    config = json.loads(Path(sys.argv[1]).read_text())
    Path(sys.argv[2]).write_text(json.dumps(main(config), indent=2))
