"""One TRL ``SFTTrainer`` run, in its own process so its time and memory are its own.

    python -m bench.trl_sft CONFIG.json RESULT.json

CONFIG: ``base_model_dir``, ``train_file`` (chat JSONL), ``output_dir``, ``variant`` (``defaults`` or
``tuned``), ``packing`` (``none``, ``padding_free``, ``packing``), ``epochs``, ``batch_size``,
``learning_rate``, ``max_length``, ``lora`` (r, alpha, targets), ``seed``, ``bf16`` (whether the
machine computes bf16 natively).

The data goes to TRL as conversational prompt-completion pairs, so TRL computes the loss on the
completion only, as selftune does on the assistant's turn; both use the model's own chat template.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any


def peft_lora(lora: dict[str, Any]) -> Any:
    """selftune's LoRA (``bench.measure.LORA``) as peft's config, for TRL's trainers."""
    from peft import LoraConfig

    return LoraConfig(
        r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=0.0, target_modules=lora["targets"], task_type="CAUSAL_LM"
    )


def train_and_save(trainer: Any, output_dir: str) -> tuple[float, Path]:
    """``trainer.train()``'s seconds (the training loop, as selftune's ``loop_seconds``) and the adapter saved."""
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    adapter = Path(output_dir) / "adapter"
    trainer.model.save_pretrained(adapter)
    return seconds, adapter


def main(cfg: dict[str, Any]) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tuned = cfg["variant"] == "tuned"
    rows = []
    with open(cfg["train_file"], encoding="utf-8") as f:
        for line in f:
            messages = json.loads(line)["messages"]
            rows.append({"prompt": messages[:-1], "completion": messages[-1:]})
    tokenizer = AutoTokenizer.from_pretrained(cfg["base_model_dir"])
    # The defaults load the model as from_pretrained does (fp32); tuned stores the frozen weights in bf16
    # where the machine computes in bf16 natively. Without that, bf16 is emulated and crawls, so both
    # run fp32 (bf16=False is then the one change to the defaults).
    bf16 = bool(cfg["bf16"])
    model = AutoModelForCausalLM.from_pretrained(
        cfg["base_model_dir"], dtype=torch.bfloat16 if tuned and bf16 else torch.float32
    )
    speed: dict[str, Any] = {"max_length": cfg["max_length"]} | ({} if bf16 else {"bf16": False})
    if tuned:
        speed = {"bf16": bf16, "gradient_checkpointing": False}
        if cfg["packing"] == "packing":
            speed["packing"] = True
        elif cfg["packing"] == "padding_free":
            # TRL refuses a max_length it cannot enforce without packing; no example comes near it.
            speed["padding_free"] = True
            speed["max_length"] = None
    args = SFTConfig(
        output_dir=cfg["output_dir"],
        num_train_epochs=cfg["epochs"],
        per_device_train_batch_size=cfg["batch_size"],
        learning_rate=cfg["learning_rate"],
        lr_scheduler_type="linear",
        warmup_steps=0.05,  # a fraction of the steps, as in selftune
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=cfg["seed"],
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        disable_tqdm=True,
        **speed,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=peft_lora(cfg["lora"]),
    )
    # Real tokens: every token of every example TRL feeds (no padding), as selftune counts them.
    tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"]) * cfg["epochs"]
    seconds, _ = train_and_save(trainer, cfg["output_dir"])
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {
        "variant": cfg["variant"],
        "packing": cfg["packing"],
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_second": tokens / seconds,
        "steps": trainer.state.global_step,
        "final_train_loss": losses[-1] if losses else None,
        "adapter": str(Path(cfg["output_dir"]) / "adapter"),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "settings": {
            "model_dtype": str(model.dtype),
            "bf16": trainer.args.bf16,
            "gradient_checkpointing": trainer.args.gradient_checkpointing,
            "packing": trainer.args.packing,
            "padding_free": trainer.args.padding_free,
            "trl": __import__("trl").__version__,
        },
    }


if __name__ == "__main__":
    config = json.loads(Path(sys.argv[1]).read_text())
    Path(sys.argv[2]).write_text(json.dumps(main(config), indent=2))
