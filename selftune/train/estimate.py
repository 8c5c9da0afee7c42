"""What a job will cost and take, before it runs, and the measured training speed behind it.

``estimate`` counts tokens with ``render_file``, the trainer's own renderer, so the billed tokens it
prints are the ``trained_tokens`` the job will report. Wall time comes from a measured throughput
(the recipe's own ``tokens_per_second``, from ``selftune estimate --probe`` or the last job that
finished on this machine), stored per base model in ``SELFTUNE_HOME/throughput.json``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from selftune.atomic import write_atomic
from selftune.data.render import RenderedFile
from selftune.methods import Hyperparameters, MethodType, answer_tokens, group_size


@dataclass
class Estimate:
    examples: int
    n_epochs: int
    batch_size: int
    steps: int
    tokens_per_epoch: int
    billed_tokens: int
    """Tokens x epochs: the seeds' cost formula, with the trainer's own token count."""
    cost: float
    tokens_per_second: float | None
    seconds: float | None
    throughput_source: str | None
    peak_memory_bytes: int | None = None
    """The training process's predicted peak (``train.memory``), where the model's folder is known."""
    memory_budget_bytes: int | None = None
    fits_memory: bool | None = None
    memory_plan: str | None = None
    """The plan in words, or why the job does not fit."""
    method: MethodType = MethodType.SUPERVISED
    beta: float | None = None
    """DPO's beta, resolved."""
    group_size: int | None = None
    """Reinforcement: answers sampled per prompt. Its token counts assume every answer takes its whole
    budget (``answer_tokens``), so they are an upper bound; most answers end sooner."""
    answer_tokens: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate(
    rendered: RenderedFile,
    hyperparameters: dict[str, Any],
    price_per_1k: float,
    throughput: dict[str, Any] | None,
    model_dir: str | Path | None = None,
    *,
    qlora: bool = False,
    method: MethodType | None = None,
) -> Estimate:
    """``method`` defaults to the file's: ``dpo`` for preference pairs, ``reinforcement`` for prompts,
    else ``supervised``."""
    formats = {"preference": MethodType.DPO, "prompts": MethodType.REINFORCEMENT}
    method = method or formats.get(rendered.format, MethodType.SUPERVISED)
    hp = Hyperparameters.resolve(hyperparameters, len(rendered.lengths), method)
    group = room = None
    tokens = rendered.tokens
    if method == MethodType.REINFORCEMENT and hp.compute_multiplier is not None:
        group, room = group_size(hp.compute_multiplier), answer_tokens(hp.reasoning_effort)
        tokens = sum(group * (len(ids) + room) for ids, _ in rendered.rows)
    memory = plan_memory(model_dir, rendered, hp.batch_size, qlora) if model_dir and rendered.rows else {}
    steps = math.ceil(rendered.examples / hp.batch_size) * hp.n_epochs
    billed = tokens * hp.n_epochs
    tps = float(throughput["tokens_per_second"]) if throughput else None
    return Estimate(
        examples=rendered.examples,
        n_epochs=hp.n_epochs,
        batch_size=hp.batch_size,
        steps=steps,
        tokens_per_epoch=tokens,
        billed_tokens=billed,
        cost=billed / 1000 * price_per_1k,
        tokens_per_second=tps,
        seconds=billed / tps if tps else None,
        throughput_source=throughput.get("source") if throughput else None,
        method=method,
        beta=hp.beta,
        group_size=group,
        answer_tokens=room,
        **memory,
    )


def plan_memory(model_dir: str | Path, rendered: RenderedFile, batch_size: int, qlora: bool) -> dict[str, Any]:
    """The recipe's memory plan for this data on this machine, as the estimate's fields."""
    from selftune.errors import InsufficientMemory, QuantizationUnavailable
    from selftune.train.memory import plan_job, training_device
    from selftune.train.protocol import TrainConfig

    lora = TrainConfig(base_model_dir=str(model_dir), train_file="", output_dir="")
    longest = max(len(ids) for ids, _ in rendered.rows)
    try:
        p = plan_job(
            model_dir,
            longest=longest,
            batch_tokens=longest * min(batch_size, rendered.examples) * rendered.per_example,
            lora_r=lora.lora_r,
            lora_targets=lora.lora_targets,
            device=training_device(),
            qlora=qlora,
            rows_per_example=rendered.per_example,
        )
    except InsufficientMemory as e:
        return {"memory_budget_bytes": e.budget, "fits_memory": False, "memory_plan": str(e)}
    except QuantizationUnavailable as e:
        return {"fits_memory": False, "memory_plan": str(e)}
    return {
        "peak_memory_bytes": p.peak,
        "memory_budget_bytes": p.budget,
        "fits_memory": True,
        "memory_plan": p.describe(),
    }


# --- measured throughput, per base model ------------------------------------------------------------


def load_throughput(home: Path, model: str) -> dict[str, Any] | None:
    path = home / "throughput.json"
    try:
        entry = json.loads(path.read_text()).get(model)
    except (OSError, ValueError):
        return None
    return entry if isinstance(entry, dict) else None


def record_throughput(home: Path, model: str, tokens_per_second: float | None, batch_size: int, source: str) -> None:
    """Remember the training speed of ``model``."""
    if not tokens_per_second:
        return
    path = home / "throughput.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    data[model] = {
        "tokens_per_second": round(tokens_per_second, 1),
        "batch_size": batch_size,
        "source": source,
        "measured_at": int(time.time()),
    }
    write_atomic(path, json.dumps(data, indent=2))
