"""What a job will cost and take, before it runs, and the measured training speed behind it.

``estimate`` counts tokens with ``render_file``, the trainer's own renderer, so the billed tokens it
prints are the ``trained_tokens`` the job will report. Wall time comes from a measured throughput
(the recipe's own ``tokens_per_second``, from ``selftune estimate --probe`` or the last job that
finished on this machine), stored per base model in ``SELFTUNE_HOME/throughput.json``.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from selftune.data.render import RenderedFile
from selftune.train.config import resolve_hyperparameters


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate(
    rendered: RenderedFile,
    hyperparameters: dict[str, Any],
    price_per_1k: float,
    throughput: dict[str, Any] | None,
) -> Estimate:
    hp = resolve_hyperparameters(hyperparameters, len(rendered.lengths))
    steps = math.ceil(len(rendered.rows) / hp["batch_size"]) * hp["n_epochs"]
    billed = rendered.tokens * hp["n_epochs"]
    tps = float(throughput["tokens_per_second"]) if throughput else None
    return Estimate(
        examples=len(rendered.rows),
        n_epochs=hp["n_epochs"],
        batch_size=hp["batch_size"],
        steps=steps,
        tokens_per_epoch=rendered.tokens,
        billed_tokens=billed,
        cost=billed / 1000 * price_per_1k,
        tokens_per_second=tps,
        seconds=billed / tps if tps else None,
        throughput_source=throughput.get("source") if throughput else None,
    )


# --- measured throughput, per base model ------------------------------------------------------------


def load_throughput(home: Path, model: str) -> dict[str, Any] | None:
    path = home / "throughput.json"
    try:
        entry = json.loads(path.read_text()).get(model)
    except (OSError, ValueError):
        return None
    return entry if isinstance(entry, dict) else None


def record_throughput(home: Path, model: str, tokens_per_second: float | None, batch_size: int, source: str) -> None:
    """Remember the training speed of ``model`` (written to a temporary file, then renamed)."""
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
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)
