"""``make bench``: selftune against its peers, side by side in one run (``bench.run``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def met(good: bool) -> str:
    """A headline target's last column in ``BENCHMARKS.md``."""
    return "met" if good else "**missed**"


def peer_run(module: str, base_dir: Path, train: Path, out: Path, seed: int, **settings: Any) -> dict[str, Any]:
    """``python -m module CONFIG RESULT`` in its own process (so its time and memory are its own), on
    the bench's model, LoRA and precision, its output in ``out/log``; the result it wrote."""
    from bench.measure import LORA, native_bf16

    cfg = {
        "base_model_dir": str(base_dir),
        "train_file": str(train),
        "output_dir": str(out),
        "lora": LORA,
        "seed": seed,
        "bf16": native_bf16(),
        **settings,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg))
    subprocess.run(
        [sys.executable, "-m", module, str(out / "config.json"), str(out / "result.json")],
        check=True,
        stdout=(out / "log").open("w"),
        stderr=subprocess.STDOUT,
    )
    result: dict[str, Any] = json.loads((out / "result.json").read_text())
    return result


def recipe_run(base_dir: Path, train: Path, out: Path, **config: Any) -> tuple[Any, list[Any]]:
    """selftune's recipe itself (``python -m selftune.train.lora``) on a job.json, as a worker runs it:
    its ``TrainConfig`` (``config`` beside the model, data and output) and its events."""
    from selftune.train.protocol import TrainConfig, read_events, recipe_command, save_config

    cfg = TrainConfig(
        base_model_dir=str(base_dir), train_file=str(train), output_dir=str(out), model_name="ft:bench", **config
    )
    subprocess.run(recipe_command(save_config(cfg)), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    return cfg, list(read_events(cfg.job_dir.events))
