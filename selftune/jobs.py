"""The fine-tuning job lifecycle: creating a job and moving it between statuses.

::

    validating_files -> queued -> running -> succeeded | failed
                          |  ^       |
                          |  |       +-> pausing -> paused --(resume)--> queued
                          +--+-------------------> paused
    any status that is not final --(cancel)--> cancelled

Every change of status is a compare-and-set in the store (``Store.transition``), so the API and
any number of workers can race (a cancel against a finish, two workers claiming one job) and
exactly one wins. The API calls ``create``, ``cancel``, ``pause`` and ``resume`` (and ``estimate``,
which only reads); the worker
(``selftune.worker``) does everything else.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selftune.blobs import Blobs
from selftune.catalog import Catalog
from selftune.data.render import render_file
from selftune.data.stats import estimate as estimate_job
from selftune.data.stats import load_throughput
from selftune.errors import InvalidRequest, NotFound
from selftune.ids import now, random_id
from selftune.schemas.fine_tuning import CreateJobRequest
from selftune.store import FileRecord, JobRecord, Store
from selftune.train.config import TrainConfig, resolve_hyperparameters

MIN_EXAMPLES = 10
"""OpenAI's minimum; fewer fails the job with ``invalid_n_examples``."""

SEED_MAX = 2_147_483_647


def create(store: Store, blobs: Blobs, catalog: Catalog, owner: str, req: CreateJobRequest) -> JobRecord:
    """Check the request, resolve the model and hyperparameters, and record a ``validating_files`` job.

    Only a malformed request is an HTTP error here; problems inside the data fail the job later,
    as on OpenAI, so that every client sees them the same way (as the job's ``error``).
    """
    method_type = req.method.type if req.method else "supervised"
    if method_type != "supervised":
        raise InvalidRequest(
            f"method.type {method_type!r} is not supported yet; selftune trains 'supervised' (SFT) jobs. "
            "Leave method out or send {'type': 'supervised'}.",
            param="method.type",
        )
    requested = _hyperparameters(req)
    resolved = catalog.resolve(req.model, owner)
    training = _training_file(store, owner, req.training_file, "training_file")
    validation = _training_file(store, owner, req.validation_file, "validation_file") if req.validation_file else None
    hyper = resolve_hyperparameters(requested, count_examples(blobs, training))
    suffix = req.suffix or ""
    job = JobRecord(
        id=random_id("ftjob-"),
        owner=owner,
        created_at=now(),
        status="validating_files",
        model=resolved.id,
        base_model=resolved.base.name,
        init_adapter=str(resolved.adapter) if resolved.adapter else None,
        training_file=training.id,
        validation_file=validation.id if validation else None,
        hyperparameters=hyper,
        method={"type": "supervised", "supervised": {"hyperparameters": hyper}},
        suffix=req.suffix,
        seed=req.seed if req.seed is not None else secrets.randbelow(SEED_MAX),
        metadata=req.metadata,
        integrations=req.integrations,
        model_name=f"ft:{resolved.base.name}:{owner}:{suffix}:{random_id('', 8)}",
        trained_tokens=0,
    )
    validating = f"Validating training file: {training.id}"
    if validation:
        validating += f" and validation file: {validation.id}"
    store.insert_job(job, [("info", f"Created fine-tuning job: {job.id}"), ("info", validating)])
    return job


def estimate(
    store: Store, blobs: Blobs, catalog: Catalog, home: Path, owner: str, req: CreateJobRequest
) -> dict[str, Any]:
    """What ``create`` would run, before running it: the CLI's ``selftune estimate``, for the API.

    Tokens are counted exactly as the trainer counts them (``render_file``), and the wall time
    comes from this machine's measured speed for the base model, when a job or probe measured it.
    """
    resolved = catalog.resolve(req.model, owner)
    training = _training_file(store, owner, req.training_file, "training_file")
    rendered = render_file(catalog.tokenizer(resolved.base), blobs.path(training.id), TrainConfig.max_seq_len)
    est = estimate_job(rendered, _hyperparameters(req), 0.0, load_throughput(home, resolved.base.name))
    result = {"object": "fine_tuning.estimate", "model": resolved.id, "training_file": training.id}
    return {**result, **est.to_dict()}


def _hyperparameters(req: CreateJobRequest) -> dict[str, Any]:
    """Merge the deprecated top-level ``hyperparameters`` with ``method.supervised.hyperparameters``."""
    top = req.hyperparameters.model_dump(exclude_none=True) if req.hyperparameters else {}
    sup = req.method.supervised if req.method and req.method.supervised else None
    nested = sup.hyperparameters.model_dump(exclude_none=True) if sup and sup.hyperparameters else {}
    for key in top.keys() & nested.keys():
        if top[key] != nested[key]:
            raise InvalidRequest(
                f"hyperparameters.{key} ({top[key]!r}) conflicts with method.supervised.hyperparameters.{key} "
                f"({nested[key]!r}); send it in one place (method.supervised.hyperparameters is current).",
                param="hyperparameters",
            )
    return {**top, **nested}


def _training_file(store: Store, owner: str, file_id: str, param: str) -> FileRecord:
    try:
        rec = store.get_file(owner, file_id)
    except NotFound:
        raise InvalidRequest(
            f"invalid {param}: {file_id}. No such file; upload it first with purpose 'fine-tune'.",
            param=param,
            code="file_not_found",
        ) from None
    if rec.purpose != "fine-tune":
        raise InvalidRequest(
            f"invalid {param}: {file_id} was uploaded with purpose {rec.purpose!r}; "
            "upload training data with purpose 'fine-tune'.",
            param=param,
        )
    return rec


def count_examples(blobs: Blobs, rec: FileRecord) -> int:
    """Non-blank lines: the file was validated at upload, so each one is an example."""
    with blobs.path(rec.id).open("rb") as f:
        return sum(1 for line in f if line.strip())


# --- status changes requested through the API -------------------------------------------------------


def cancel(store: Store, owner: str, job_id: str) -> JobRecord:
    """Final at once; a worker training the job sees it within a second and kills the process."""
    movable = ("validating_files", "queued", "running", "pausing", "paused")
    values = {"status": "cancelled", "finished_at": now(), "estimated_finish": None}
    return _move(store, owner, job_id, movable, values, "Fine-tuning job cancelled", "cancelled")


def pause(store: Store, owner: str, job_id: str) -> JobRecord:
    """A queued job pauses at once; a running one becomes ``pausing`` until its state is saved."""
    job = store.get_job(owner, job_id)
    if job.status == "queued":
        values: dict[str, Any] = {"status": "paused", "estimated_finish": None}
        return _move(store, owner, job_id, ("queued",), values, "Fine-tuning job paused", "paused")
    values = {"status": "pausing"}
    message = "Pausing fine-tuning job: saving its state at the end of the current step"
    return _move(store, owner, job_id, ("running",), values, message, "paused")


def resume(store: Store, owner: str, job_id: str) -> JobRecord:
    values = {"status": "queued"}
    message = "Fine-tuning job resumed, moving job to queued state"
    return _move(store, owner, job_id, ("paused",), values, message, "resumed")


def _move(
    store: Store,
    owner: str,
    job_id: str,
    from_statuses: Sequence[str],
    values: dict[str, Any],
    message: str,
    verb: str,
) -> JobRecord:
    job = store.get_job(owner, job_id)  # NotFound for other owners' jobs, as for missing ones
    if not store.transition(job.id, from_statuses, values, [("info", message)]):
        job = store.get_job(owner, job_id)
        allowed = " or ".join(from_statuses) if len(from_statuses) < 3 else "unfinished"
        raise InvalidRequest(
            f"Job {job_id} is {job.status}, so it cannot be {verb}: only {allowed} jobs can.",
            param="fine_tuning_job_id",
            code="invalid_job_status",
        )
    return store.get_job(owner, job_id)
