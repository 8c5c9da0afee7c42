"""What a worker starts for a job: its ``job.json``, and the process that trains it.

The same two steps serve the worker that claimed a job (the head) and, for a job trained by a group
of machines, each member that joins it (``selftune.groups``): ``train_config`` writes the recipe's
input with this machine's paths (the base model and the files are fetched from the store when they
are not here), and ``spawn`` starts the recipe, or torchrun's launcher when the job gets more than
one process (``protocol.recipe_command``), with the CPU threads and memory this worker offers.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import IO

from selftune import integrations
from selftune.catalog import BaseModelSpec, Catalog
from selftune.children import lower_priority
from selftune.errors import SelftuneError
from selftune.graders.python_grader import hidden_folders
from selftune.methods import MethodType
from selftune.services import Core
from selftune.store import JobRecord
from selftune.train.protocol import JobDir, Launch, TrainConfig, recipe_command, save_config
from selftune.workers import Offer, cpu_threads


class CannotStart(Exception):
    """Why a claimed job cannot start here, with the error code it fails with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def train_config(core: Core, job: JobRecord, files: JobDir) -> TrainConfig:
    """The job's ``job.json`` in ``files``, naming this machine's copies of its model and files."""
    catalog, store, blobs = core.catalog, core.store, core.blobs
    try:
        base = catalog.get_base(job.base_model)
        base_dir = catalog.materialize(base)
    except SelftuneError as e:
        raise CannotStart(
            "model_not_available", f"The base model {job.base_model} cannot be loaded: {e.message}"
        ) from e
    try:
        train = store.get_file(job.owner, job.training_file)
        valid = store.get_file(job.owner, job.validation_file) if job.validation_file else None
    except SelftuneError as e:  # deleted after validation
        raise CannotStart("file_not_found", f"A file of this job was deleted before it started: {e.message}") from e
    rft = job.method.get(MethodType.REINFORCEMENT.value) or {}
    cfg = TrainConfig(
        base_model_dir=str(base_dir),
        train_file=str(blobs.path(train.id)),
        valid_file=str(blobs.path(valid.id)) if valid else None,
        output_dir=str(files.root),
        method=job.method_type,
        hyperparameters=job.hyperparameters,
        seed=job.seed,
        max_seq_len=catalog.sequence_limit(base),
        init_adapter=str(catalog.adapter_dir(job.init_adapter)) if job.init_adapter else None,
        qlora=base.qlora,
        eval_examples=core.settings.eval_examples,
        model_name=job.model_name,
        base_model_name=job.base_model,
        train_name=train.filename,
        valid_name=valid.filename if valid else None,
        wandb=integrations.wandb_run(job.integrations, job.id),
        grader=rft.get("grader"),
        response_format=rft.get("response_format"),
        hidden_dirs=[str(p) for p in hidden_folders(core.settings)],
        sampling_gguf=_sampling_gguf(catalog, base) if job.method_type == MethodType.REINFORCEMENT else None,
    )
    save_config(cfg)
    return cfg


def spawn(core: Core, cfg: TrainConfig, launch: Launch, offer: Offer) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
    """Start the training process(es) of ``cfg``; their output goes to the job's ``train.log``."""
    settings = core.settings
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    threads = cpu_threads(core.store, offer, settings.lease_seconds)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    if settings.worker_memory_bytes:  # the recipe plans within what this worker offers
        env["SELFTUNE_TRAIN_MEMORY"] = str(settings.worker_memory_bytes)
    files = cfg.job_dir
    train_log = files.log.open("ab")
    proc = subprocess.Popen(
        recipe_command(files.config, cfg.method, launch),
        stdout=train_log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    lower_priority(proc.pid, settings.train_priority)
    return proc, train_log


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _sampling_gguf(catalog: Catalog, base: BaseModelSpec) -> str | None:
    """The GGUF a reinforcement job's answers are sampled from by llama.cpp (None: the recipe samples)."""
    gguf = catalog.gguf(base)
    return str(gguf) if gguf else None
