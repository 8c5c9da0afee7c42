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
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

from pydantic import TypeAdapter

from selftune import integrations
from selftune.catalog import BaseModelSpec, Catalog
from selftune.children import lower_priority
from selftune.errors import NotFound, SelftuneError
from selftune.graders.check import judge_models
from selftune.graders.python_grader import hidden_folders
from selftune.methods import MethodType
from selftune.permissions import resolve_callable
from selftune.schemas.graders import Grader
from selftune.services import Core
from selftune.store import JobRecord
from selftune.train.judging import API_KEY_ENV, JudgeModel
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
        judges=judges(core, job.owner, rft.get("grader")),
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
    if settings.judge_api_key:  # for remote judges (train.judging); never written into job.json
        env[API_KEY_ENV] = settings.judge_api_key
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


def judges(core: Core, owner: str, grader: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The judge models ``grader`` names (``score_model``, ``label_model``), as the trainer loads them
    (``train.judging.JudgeModel``): each resolved for ``owner`` as the server resolves a judge, with
    this machine's GGUF and folder of its base and the ``ft:`` model's adapter (fetched from the store),
    or the operator's judge API for a model this server does not have."""
    if not grader:
        return []
    catalog, out = core.catalog, []
    for model in judge_models(TypeAdapter(Grader).validate_python(grader)):
        try:
            resolved = resolve_callable(catalog, model, owner)
        except NotFound:
            if not core.settings.judge_base_url:
                raise CannotStart(
                    "model_not_available", f"The judge {model!r} of this job's grader no longer exists."
                ) from None
            out.append(asdict(JudgeModel(model, remote=core.settings.judge_base_url)))
            continue
        gguf = catalog.gguf(resolved.base)
        if gguf is None:
            raise CannotStart("model_not_available", f"The judge {model!r} has no GGUF file for llama.cpp here.")
        adapter = str(resolved.adapter) if resolved.adapter else None
        judge = JudgeModel(
            model, resolved.id, resolved.base.name, str(gguf), str(catalog.materialize(resolved.base)), adapter
        )
        out.append(asdict(judge))
    return out


def _sampling_gguf(catalog: Catalog, base: BaseModelSpec) -> str | None:
    """The GGUF a reinforcement job's answers are sampled from by llama.cpp (None: the recipe samples)."""
    gguf = catalog.gguf(base)
    return str(gguf) if gguf else None
