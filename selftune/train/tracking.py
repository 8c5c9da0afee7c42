"""Logging a job's metrics to Weights & Biases, for jobs created with a ``wandb`` integration.

``open_events(cfg)`` gives the recipe an ``EventWriter`` whose ``Metrics`` and ``Checkpoint``
events are also logged to the run, and ``Done``, ``Paused`` and ``Error`` finish it. The run
is online when W&B can be reached with credentials (``WANDB_API_KEY`` or ``wandb login``), and
offline otherwise, in the job folder, to upload later with ``wandb sync``; ``WANDB_MODE`` overrides
the choice. Either way the job's events say where the run is.
"""

from __future__ import annotations

import netrc
import os
import socket
from pathlib import Path
from typing import Any

from selftune.train.protocol import (
    Checkpoint,
    Done,
    Error,
    EventWriter,
    Message,
    Metrics,
    Paused,
    RecipeEvent,
    TrainConfig,
)

WANDB_HOST = "api.wandb.ai"


class Tracked(EventWriter):
    """An ``EventWriter`` that also logs to a W&B run."""

    def __init__(self, path: Path, run: Any) -> None:
        super().__init__(path)
        self.run = run

    def emit(self, event: RecipeEvent) -> None:
        super().emit(event)
        if isinstance(event, Metrics):
            self.run.log({k: v for k, v in event.data().items() if k != "step"}, step=event.step)
        elif isinstance(event, Checkpoint):
            self.run.summary.update({f"checkpoint/{k}": v for k, v in event.metrics.items()})
        elif isinstance(event, Done | Paused | Error):
            self.run.finish(exit_code=1 if isinstance(event, Error) else 0)


class Silent(EventWriter):
    """The event writer of a rank other than the main one: the main rank reports for all."""

    def __init__(self) -> None:
        pass

    def emit(self, event: RecipeEvent) -> None:
        pass

    def close(self) -> None:
        pass


def open_events(cfg: TrainConfig, main: bool = True) -> EventWriter:
    """The recipe's event writer: logging to the job's W&B run when it has one. A run that cannot
    start is a warning in the job's events, never a reason to fail the training."""
    if not main:
        return Silent()
    path = cfg.job_dir.events
    if not cfg.wandb:
        return EventWriter(path)
    try:
        run, where = _start(cfg, cfg.wandb)
    except Exception as e:
        events = EventWriter(path)
        events.emit(Message(f"W&B logging could not start ({e.__class__.__name__}: {e}); training goes on", "warn"))
        return events
    events = Tracked(path, run)
    events.emit(Message(f"Logging metrics to the W&B run {run.name!r} {where}", extra={"wandb": where}))
    return events


def _start(cfg: TrainConfig, spec: dict[str, Any]) -> tuple[Any, str]:
    import wandb

    mode: Any = os.environ.get("WANDB_MODE") or ("online" if _reachable() else "offline")
    hp = cfg.hyperparameters
    hyper = {**hp.to_dict(), "learning_rate": hp.learning_rate, "seed": cfg.seed}
    hyper.update(lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha)
    run = wandb.init(
        project=spec["project"],
        entity=spec.get("entity"),
        name=spec.get("name"),
        tags=spec.get("tags") or None,
        id=spec.get("id"),
        resume="allow",
        mode=mode,
        dir=str(cfg.job_dir.root),
        config={"base_model": cfg.base_model_name, "method": cfg.method, **hyper},
        settings=wandb.Settings(silent=True, console="off"),
    )
    if mode == "offline":
        folder = os.path.dirname(run.dir)
        return run, f"offline in {folder} (upload it with `wandb sync {folder}`)"
    return run, f"at {run.url}"


def _reachable() -> bool:
    """Credentials for W&B and a connection to it within 3 seconds."""
    has_key = bool(os.environ.get("WANDB_API_KEY"))
    if not has_key:
        try:
            has_key = netrc.netrc().authenticators(WANDB_HOST) is not None
        except (OSError, netrc.NetrcParseError):
            has_key = False
    if not has_key:
        return False
    try:
        socket.create_connection((WANDB_HOST, 443), timeout=3).close()
    except OSError:
        return False
    return True
