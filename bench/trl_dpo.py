"""One TRL ``DPOTrainer`` run, in its own process so its time and memory are its own.

    python -m bench.trl_dpo CONFIG.json RESULT.json

CONFIG: ``base_model_dir``, ``train_file`` (OpenAI preference JSONL), ``output_dir``, ``variant``
(``defaults``: TRL's ``DPOConfig`` as it comes, or ``selftune``: selftune's resolved DPO settings),
``settings`` (for ``selftune``: ``learning_rate``, ``epochs``, ``batch_size``, ``beta``,
``rpo_alpha``), ``lora`` (r, alpha, targets), ``seed``, ``bf16``.

Both variants train the same LoRA on the same pairs, given to TRL as conversational
prompt/chosen/rejected rows, so TRL renders them with the model's own chat template as selftune
does. selftune's anchor (``rpo_alpha``) is TRL's ``loss_type=["sigmoid", "sft"]`` with
``loss_weights=[1, rpo_alpha]``: the same next-token loss on the preferred answer.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench.trl_sft import peft_lora, train_and_save


def main(cfg: dict[str, Any]) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    rows = []
    with open(cfg["train_file"], encoding="utf-8") as f:
        for line in f:
            pair = json.loads(line)
            rows.append(
                {
                    "prompt": pair["input"]["messages"],
                    "chosen": pair["preferred_output"],
                    "rejected": pair["non_preferred_output"],
                }
            )
    tokenizer = AutoTokenizer.from_pretrained(cfg["base_model_dir"])
    model = AutoModelForCausalLM.from_pretrained(cfg["base_model_dir"], dtype=torch.float32)
    common: dict[str, Any] = {
        "output_dir": cfg["output_dir"],
        "save_strategy": "no",
        "report_to": [],
        "seed": cfg["seed"],
        "use_cpu": not torch.cuda.is_available(),
        "bf16": bool(cfg["bf16"]),  # TRL's default asks for bf16 even where the CPU only emulates it
        "logging_steps": 1,
        "disable_tqdm": True,
    }
    s = cfg.get("settings") or {}
    if cfg["variant"] == "selftune":
        anchor = float(s.get("rpo_alpha") or 0.0)
        common |= {
            "learning_rate": s["learning_rate"],
            "num_train_epochs": s["epochs"],
            "per_device_train_batch_size": s["batch_size"],
            "beta": s["beta"],
            "lr_scheduler_type": "linear",
            "warmup_steps": 0.05,
            "weight_decay": 0.0,
            "max_grad_norm": 1.0,
            "gradient_checkpointing": False,
            **({"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, anchor]} if anchor else {}),
        }
    args = DPOConfig(**common)
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=peft_lora(cfg["lora"]),
    )
    seconds, adapter = train_and_save(trainer, cfg["output_dir"])
    return {
        "variant": cfg["variant"],
        "seconds": seconds,
        "steps": trainer.state.global_step,
        "adapter": str(adapter),
        "settings": {
            "learning_rate": trainer.args.learning_rate,
            "epochs": trainer.args.num_train_epochs,
            "batch_size": trainer.args.per_device_train_batch_size,
            "beta": trainer.args.beta,
            "loss_type": list(trainer.args.loss_type),
            "loss_weights": trainer.args.loss_weights,
            "trl": __import__("trl").__version__,
        },
    }


if __name__ == "__main__":
    config = json.loads(Path(sys.argv[1]).read_text())
    Path(sys.argv[2]).write_text(json.dumps(main(config), indent=2))
