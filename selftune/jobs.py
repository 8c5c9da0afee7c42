"""The fine-tuning job lifecycle: the one status machine, and the bookkeeping of each move.

Every change of a job's status, whether the API or a worker asks for it, goes through ``apply``
and the ``TRANSITIONS`` table below; a move the table does not have raises ``InvalidJobStatus``.
``apply`` is a compare-and-set in the store (``Store.transition``), so the API and any number of
workers can race (a cancel against a finish, two workers claiming one job) and exactly one wins.

::

    validating_files -> queued -> running -> succeeded | failed
                          |  ^       |
                          |  |       +-> pausing -> paused --(resume)--> queued
                          +--+-------------------> paused
    any status that is not final --(cancel)--> cancelled

The bookkeeping that goes with a move lives here too: checking the files (``validate_files``),
failing (``fail``), and succeeding (``succeed``: result files, model registration, throughput).
The worker (``selftune.worker``) only supervises training processes and calls these.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from selftune import integrations
from selftune.blobs import Blobs
from selftune.catalog import Catalog
from selftune.data.render import render_file
from selftune.errors import InvalidRequest, NotFound
from selftune.ids import now, random_id
from selftune.schemas.fine_tuning import CreateJobRequest
from selftune.store import CheckpointRecord, FileRecord, JobRecord, ModelRecord, Store
from selftune.train.config import METHODS, resolve_hyperparameters
from selftune.train.estimate import estimate as estimate_job
from selftune.train.estimate import load_throughput, record_throughput
from selftune.train.protocol import Done, JobDir
from selftune.uploads import ensure_validated

MIN_EXAMPLES = 10
"""OpenAI's minimum; fewer fails the job with ``invalid_n_examples``."""

SEED_MAX = 2_147_483_647


class Status(StrEnum):
    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    PAUSING = "pausing"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED})
UNFINISHED = frozenset(Status) - TERMINAL
TRAINING = frozenset({Status.RUNNING, Status.PAUSING})
"""Statuses in which a worker owns the job and a training process may be running."""


class Action(StrEnum):
    VALIDATED = "validated"  # worker: the files are fine
    START = "start"  # worker: claims a queued job
    PAUSE = "pause"  # API
    PAUSED = "paused"  # worker: the recipe saved its state and stopped
    RESUME = "resume"  # API
    REQUEUE = "requeue"  # worker: its training stopped (shutdown, crash) with state to continue from
    SUCCEED = "succeed"  # worker
    FAIL = "fail"  # worker
    CANCEL = "cancel"  # API


@dataclass(frozen=True)
class Transition:
    source: Status
    action: Action
    target: Status
    message: str | None = None
    """The job event this move adds (in OpenAI's wording), if any."""


TRANSITIONS: tuple[Transition, ...] = (
    Transition(Status.VALIDATING_FILES, Action.VALIDATED, Status.QUEUED, "Files validated, moving job to queued state"),
    Transition(Status.QUEUED, Action.START, Status.RUNNING),
    Transition(Status.QUEUED, Action.PAUSE, Status.PAUSED, "Fine-tuning job paused"),
    Transition(
        Status.RUNNING,
        Action.PAUSE,
        Status.PAUSING,
        "Pausing fine-tuning job: saving its state at the end of the current step",
    ),
    Transition(Status.RUNNING, Action.PAUSED, Status.PAUSED),
    Transition(Status.PAUSING, Action.PAUSED, Status.PAUSED),
    Transition(Status.PAUSED, Action.RESUME, Status.QUEUED, "Fine-tuning job resumed, moving job to queued state"),
    Transition(Status.RUNNING, Action.REQUEUE, Status.QUEUED),
    Transition(Status.PAUSING, Action.REQUEUE, Status.PAUSED),
    Transition(Status.RUNNING, Action.SUCCEED, Status.SUCCEEDED),
    Transition(Status.PAUSING, Action.SUCCEED, Status.SUCCEEDED),
    *(Transition(s, Action.FAIL, Status.FAILED) for s in sorted(UNFINISHED)),
    *(Transition(s, Action.CANCEL, Status.CANCELLED, "Fine-tuning job cancelled") for s in sorted(UNFINISHED)),
)
_TABLE = {(t.source, t.action): t for t in TRANSITIONS}
_PAST = {Action.PAUSE: "paused", Action.RESUME: "resumed", Action.CANCEL: "cancelled"}


class InvalidJobStatus(InvalidRequest):
    """A move the status machine does not have (resuming a running job, cancelling a finished one)."""

    def __init__(self, job_id: str, status: str, action: Action) -> None:
        allowed_from = sources(action)
        allowed = " or ".join(allowed_from) if len(allowed_from) < 3 else "unfinished"
        verb = _PAST.get(action, f"moved by {action.value!r}")
        super().__init__(
            f"Job {job_id} is {status}, so it cannot be {verb}: only {allowed} jobs can.",
            param="fine_tuning_job_id",
            code="invalid_job_status",
        )
        self.status = status
        self.action = action


def sources(action: Action) -> list[str]:
    """The statuses ``action`` can move a job from (for clients that enable buttons)."""
    return sorted(t.source.value for t in TRANSITIONS if t.action == action)


def apply(
    store: Store,
    job: JobRecord,
    action: Action,
    values: dict[str, Any] | None = None,
    events: Sequence[tuple[str, str]] = (),
    new_models: Sequence[ModelRecord] = (),
) -> JobRecord:
    """Move ``job`` by ``action``: the table's target status, its event, then ``events``, the extra
    ``values`` and ``new_models``, in one transaction. Raises ``InvalidJobStatus`` if the job's status
    (read again if it changed under us) has no such move."""
    while True:
        move = _TABLE.get((Status(job.status), action))
        if move is None:
            raise InvalidJobStatus(job.id, job.status, action)
        update = {"status": move.target.value, **_entering(move.target), **(values or {})}
        added = [("info", move.message)] if move.message else []
        if store.transition(job.id, [job.status], update, [*added, *events], new_models):
            return store.get_job(None, job.id)
        job = store.get_job(None, job.id)  # it moved meanwhile: decide again from where it is now


def _entering(target: Status) -> dict[str, Any]:
    """What every move into ``target`` resets: no estimate unless running, no worker unless training."""
    values: dict[str, Any] = {} if target == Status.RUNNING else {"estimated_finish": None}
    if target not in TRAINING:
        values["worker_id"] = None
    if target in TERMINAL:
        values["finished_at"] = now()
    return values


# --- creating a job --------------------------------------------------------------------------------


def create(store: Store, blobs: Blobs, catalog: Catalog, owner: str, req: CreateJobRequest) -> JobRecord:
    """Check the request, resolve the model and hyperparameters, and record a ``validating_files`` job.

    Only a malformed request is an HTTP error here; problems inside the data fail the job later,
    as on OpenAI, so that every client sees them the same way (as the job's ``error``).
    """
    method_type = method_of(req)
    integrations.check(req.integrations)
    requested = hyperparameters(req, method_type)
    resolved = catalog.resolve(req.model, owner)
    training = training_file(store, owner, req.training_file, "training_file")
    validation = training_file(store, owner, req.validation_file, "validation_file") if req.validation_file else None
    verdict = ensure_validated(store, blobs, training)
    hyper = resolve_hyperparameters(requested, int(verdict.get("n_examples", 0)), method_type)
    common = {k: v for k, v in hyper.items() if k != "beta"}  # the deprecated top-level shape has no beta
    suffix = req.suffix or ""
    job = JobRecord(
        id=random_id("ftjob-"),
        owner=owner,
        created_at=now(),
        status=Status.VALIDATING_FILES.value,
        model=resolved.id,
        base_model=resolved.base.name,
        init_adapter=str(resolved.adapter) if resolved.adapter else None,
        training_file=training.id,
        validation_file=validation.id if validation else None,
        hyperparameters=common,
        method={"type": method_type, method_type: {"hyperparameters": hyper}},
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
    kind = method_of(req)
    resolved = catalog.resolve(req.model, owner)
    training = training_file(store, owner, req.training_file, "training_file")
    limit = catalog.sequence_limit(resolved.base)
    rendered = render_file(catalog.tokenizer(resolved.base), blobs.path(training.id), limit)
    est = estimate_job(
        rendered,
        hyperparameters(req, kind),
        0.0,
        load_throughput(home, resolved.base.name),
        catalog.materialize(resolved.base),
        qlora=resolved.base.qlora,
        method=kind,
    )
    result = {"object": "fine_tuning.estimate", "model": resolved.id, "training_file": training.id}
    return {**result, **est.to_dict()}


def method_of(req: CreateJobRequest) -> str:
    """``method.type`` (``supervised`` when absent, as on OpenAI), refused with a 400 when selftune
    does not train it or the request's method settings belong to another type."""
    if req.method is None:
        return "supervised"
    kind = req.method.type
    if kind not in METHODS:
        raise InvalidRequest(
            f"method.type {kind!r} is not supported: selftune trains 'supervised' (SFT) and 'dpo' (preference) "
            "jobs. Reinforcement fine-tuning needs graders and sampled answers, which a LoRA trainer does not run.",
            param="method.type",
        )
    for other in ("supervised", "dpo", "reinforcement"):
        if other != kind and getattr(req.method, other) is not None:
            raise InvalidRequest(
                f"method.{other} was sent, but method.type is {kind!r}; put the settings under method.{kind}.",
                param=f"method.{other}",
            )
    return kind


def hyperparameters(req: CreateJobRequest, kind: str) -> dict[str, Any]:
    """Merge the deprecated top-level ``hyperparameters`` with ``method.<kind>.hyperparameters``."""
    top = req.hyperparameters.model_dump(exclude_none=True) if req.hyperparameters else {}
    settings = getattr(req.method, kind, None) if req.method else None
    nested = settings.hyperparameters.model_dump(exclude_none=True) if settings and settings.hyperparameters else {}
    for key in top.keys() & nested.keys():
        if top[key] != nested[key]:
            raise InvalidRequest(
                f"hyperparameters.{key} ({top[key]!r}) conflicts with method.{kind}.hyperparameters.{key} "
                f"({nested[key]!r}); send it in one place (method.{kind}.hyperparameters is current).",
                param="hyperparameters",
            )
    return {**top, **nested}


def training_file(store: Store, owner: str, file_id: str, param: str) -> FileRecord:
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


# --- moves the API asks for ------------------------------------------------------------------------


def cancel(store: Store, owner: str, job_id: str) -> JobRecord:
    """Final at once; a worker training the job sees it within a second and kills the process."""
    return apply(store, store.get_job(owner, job_id), Action.CANCEL)


def pause(store: Store, owner: str, job_id: str) -> JobRecord:
    """A queued job pauses at once; a running one becomes ``pausing`` until its state is saved."""
    return apply(store, store.get_job(owner, job_id), Action.PAUSE)


def resume(store: Store, owner: str, job_id: str) -> JobRecord:
    return apply(store, store.get_job(owner, job_id), Action.RESUME)


# --- the worker's bookkeeping ----------------------------------------------------------------------


def validate_files(store: Store, blobs: Blobs, job: JobRecord) -> JobRecord:
    """``validating_files`` -> ``queued``, or ``failed`` with OpenAI's error codes. The files were
    validated at upload: this checks the stored verdict and that the bytes are still those."""
    checks = [("training_file", job.training_file)]
    if job.validation_file:
        checks.append(("validation_file", job.validation_file))
    for param, file_id in checks:
        try:
            rec = store.get_file(job.owner, file_id)
        except NotFound:
            return fail(
                store, job, "file_not_found", f"The {param} {file_id} was deleted before the job started.", param
            )
        verdict = ensure_validated(store, blobs, rec)
        if rec.checksum and blobs.checksum(rec.id) != rec.checksum:
            message = f"The {param} {file_id} ({rec.filename}) changed on disk since it was uploaded; upload it again."
            return fail(store, job, "invalid_file_format", message, param)
        if not verdict.get("ok"):
            return fail(store, job, "invalid_file_format", str(verdict.get("summary", "invalid file")), param)
        wrong = _format_mismatch(rec.filename, str(verdict.get("format")), str(job.method.get("type")))
        if wrong:
            return fail(store, job, "invalid_file_format", wrong, param)
        n = int(verdict.get("n_examples", 0))
        if param == "training_file" and n < MIN_EXAMPLES:
            message = f"Training file has {n} example(s), but must have at least {MIN_EXAMPLES} examples"
            return fail(store, job, "invalid_n_examples", message, param)
    return apply(store, job, Action.VALIDATED)


def _format_mismatch(filename: str, fmt: str, method: str) -> str | None:
    """Why a file of format ``fmt`` cannot train a ``method`` job, or None when it can."""
    if method == "dpo" and fmt != "preference":
        return (
            f"{filename} holds chat examples, but this is a DPO job, which trains on preference pairs: "
            '{"input": {"messages": [...]}, "preferred_output": [assistant message], "non_preferred_output": '
            "[assistant message]} (build them with `selftune prepare --chosen COL --rejected COL`), or create "
            "a supervised job for this file."
        )
    if method != "dpo" and fmt == "preference":
        return (
            f"{filename} holds preference pairs (DPO format), but this is a supervised job; "
            "upload chat examples ({'messages': [...]}) instead, or create the job with method "
            "{'type': 'dpo'}."
        )
    return None


def fail(store: Store, job: JobRecord, code: str, message: str, param: str | None = None) -> JobRecord:
    error = {"code": code, "message": message, "param": param}
    return apply(store, job, Action.FAIL, {"error": error}, [("error", message)])


def record_checkpoint(
    store: Store, job: JobRecord, step: int, metrics: dict[str, Any], path: str, kept: list[str]
) -> None:
    store.put_checkpoint(CheckpointRecord(random_id("ftckpt_"), job.id, now(), step, metrics, path), keep=kept)


def succeed(store: Store, blobs: Blobs, home: Path, job: JobRecord, files: JobDir, done: Done) -> JobRecord:
    """Upload the result files, register the model and its checkpoints, and finish the job, in one
    move; if the job was cancelled in the last moment, nothing is registered and the results go."""
    results = [upload_result(store, blobs, job.owner, files.metrics, "step_metrics.csv")]
    # The end-of-job evaluation (when the job had a validation file) rides along as result files.
    for path, target in ((files.eval_html, "eval_report.html"), (files.eval_json, "eval_report.json")):
        if path.is_file():
            results.append(upload_result(store, blobs, job.owner, path, target))
    ckpts, _ = store.list_checkpoints(job.id, limit=1000)
    created = now()
    models = [ModelRecord(job.model_name, job.owner, created, job.base_model, str(files.adapter), job.id)]
    models += [
        ModelRecord(
            f"{job.model_name}:ckpt-step-{c.step_number}", job.owner, created, job.base_model, c.adapter_path, job.id
        )
        for c in ckpts
    ]
    values = {
        "fine_tuned_model": job.model_name,
        "trained_tokens": done.trained_tokens,
        "result_files": [r.id for r in results],
    }
    events = [
        ("info", f"New fine-tuned model created: {job.model_name}"),
        ("info", "The job has successfully completed"),
    ]
    try:
        job = apply(store, job, Action.SUCCEED, values, events, models)
    except InvalidJobStatus:
        for r in results:
            store.delete_file(job.owner, r.id)
            blobs.delete(r.id)
        raise
    finally:
        files.state.unlink(missing_ok=True)  # only needed to continue; the adapters stay
    batch_size = int(job.hyperparameters["batch_size"])
    record_throughput(home, job.base_model, done.tokens_per_second, batch_size, f"job {job.id}")
    return job


def upload_result(
    store: Store, blobs: Blobs, owner: str, path: Path, filename: str, purpose: str = "fine-tune-results"
) -> FileRecord:
    """A result file (a job's ``fine-tune-results``, a batch's ``batch_output``), registered only once
    its bytes are in place."""
    with path.open("rb") as src:
        tmp, size, checksum = blobs.copy_to_temp(src, None)
    rec = FileRecord(
        id=random_id("file-"),
        owner=owner,
        filename=filename,
        purpose=purpose,
        size_bytes=size,
        created_at=now(),
        expires_at=None,
        status="processed",
        status_details=None,
        checksum=checksum,
    )
    blobs.commit(tmp, rec.id)
    store.insert_file(rec)
    return rec
