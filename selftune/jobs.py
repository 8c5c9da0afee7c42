"""Fine-tuning jobs: creating one, and every move of its status with the bookkeeping that goes with it.

Every change of a job's status, whether the API or a worker asks for it, goes through ``apply`` and
the job machine of ``selftune.statuses`` (``JOBS``); a move the machine does not have raises
``InvalidStatus``. ``apply`` is a compare-and-set in the store (``Store.transition``), so the API
and any number of workers can race (a cancel against a finish, two workers claiming one job) and
exactly one wins. A worker claims a job by starting it (``start``: its lease is part of the move),
and every move out of the statuses a worker holds it in releases the claim.

The bookkeeping that goes with a move lives here too: checking the files (``validate_files``),
failing (``fail``), and succeeding (``succeed``: result files, model registration, throughput).
The worker (``selftune.worker``) only supervises training processes and calls these.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from selftune import integrations
from selftune.blobs import Blobs
from selftune.catalog import Catalog
from selftune.claims import lease
from selftune.data.render import render_file
from selftune.errors import InvalidRequest, InvalidStatus, NotFound
from selftune.evals.service import Evals
from selftune.faults import crash_point
from selftune.files import ensure_validated, register_result
from selftune.graders.check import reinforcement_settings
from selftune.ids import now, random_id
from selftune.methods import TRAINED, Hyperparameters, MethodType, format_mismatch
from selftune.schemas.fine_tuning import CreateJobRequest
from selftune.statuses import JOBS, JobAction, JobStatus
from selftune.store import CheckpointRecord, FileRecord, JobRecord, ModelRecord, Store
from selftune.tables import UNCLAIMED
from selftune.train.estimate import estimate as estimate_job
from selftune.train.estimate import load_throughput, record_throughput
from selftune.train.protocol import Done, JobDir

log = logging.getLogger(__name__)

MIN_EXAMPLES = 10
"""OpenAI's minimum; fewer fails the job with ``invalid_n_examples``."""

SEED_MAX = 2_147_483_647


def apply(
    store: Store,
    job: JobRecord,
    action: JobAction,
    values: dict[str, Any] | None = None,
    events: Sequence[tuple[str, str]] = (),
    new_models: Sequence[ModelRecord] = (),
) -> JobRecord:
    """Move ``job`` by ``action``: the machine's target status, its event, then ``events``, the extra
    ``values`` and ``new_models``, in one transaction. Raises ``InvalidStatus`` if the job's status
    (read again if it changed under us) has no such move."""

    def write(current: JobRecord, move: Any) -> JobRecord | None:
        update = {"status": move.target.value, **_entering(move.target), **(values or {})}
        added = [("info", move.message)] if move.message else []
        if store.transition(current.id, [current.status], update, [*added, *events], new_models):
            return store.get_job(None, current.id)
        return None

    return JOBS.apply(
        job, action, status=_status, key=_id, write=write, reread=lambda current: store.get_job(None, current.id)
    )


def _status(job: JobRecord) -> str:
    return job.status


def _id(job: JobRecord) -> str:
    return job.id


def _entering(target: JobStatus) -> dict[str, Any]:
    """What every move into ``target`` resets: no estimate unless running, no claim unless a worker
    holds the job there."""
    values: dict[str, Any] = {} if target == JobStatus.RUNNING else {"estimated_finish": None}
    if target not in JOBS.claimed:
        values.update(UNCLAIMED)
    if target in JOBS.terminal:
        values["finished_at"] = now()
    return values


def start(store: Store, job: JobRecord, holder: str, lease_seconds: float) -> JobRecord:
    """A worker's claim: ``queued`` -> ``running``, held by ``holder`` for ``lease_seconds`` (renewed
    by its ``claims.LeaseKeeper``). ``InvalidStatus`` when another worker took it first."""
    return apply(store, job, JobAction.START, lease(holder, lease_seconds))


def claim_next(store: Store, holder: str, lease_seconds: float, exclude: Iterable[str] = ()) -> JobRecord | None:
    """A worker's claim of the oldest queued job (but those in ``exclude``: what does not fit it),
    ``queued`` -> ``running`` like ``start``; None when there is none to take."""
    move = JOBS.move(JobStatus.QUEUED, JobAction.START, "")
    values = {"status": move.target.value, **_entering(move.target), **lease(holder, lease_seconds)}
    events = [("info", move.message)] if move.message else []
    return store.claim_queued(JobStatus.QUEUED.value, values, events, exclude)


# --- creating a job --------------------------------------------------------------------------------


def create(
    store: Store, blobs: Blobs, catalog: Catalog, owner: str, req: CreateJobRequest, wandb_projects: str | None = None
) -> JobRecord:
    """Check the request, resolve the model and hyperparameters, and record a ``validating_files`` job.

    Only a malformed request is an HTTP error here; problems inside the data fail the job later,
    as on OpenAI, so that every client sees them the same way (as the job's ``error``).
    """
    method_type = method_of(req)
    rft = method_type == MethodType.REINFORCEMENT
    settings = reinforcement_settings(req.method.reinforcement if req.method else None, catalog, owner) if rft else None
    if settings and not req.validation_file:
        raise InvalidRequest(
            "a reinforcement job needs a validation_file (as on OpenAI): its prompts are answered and graded "
            "every eval_interval steps (valid_reward_mean), which chooses the checkpoints kept",
            param="validation_file",
        )
    integrations.check(req.integrations, wandb_projects)
    requested = hyperparameters(req, method_type)
    resolved = catalog.resolve(req.model, owner, fetch=False)  # trained on, perhaps, another machine
    training = training_file(store, owner, req.training_file, "training_file")
    validation = training_file(store, owner, req.validation_file, "validation_file") if req.validation_file else None
    verdict = ensure_validated(store, blobs, training)
    hyper = Hyperparameters.resolve(requested, int(verdict.get("n_examples", 0)), method_type)
    suffix = req.suffix or ""
    job = JobRecord(
        id=random_id("ftjob-"),
        owner=owner,
        created_at=now(),
        status=JobStatus.VALIDATING_FILES.value,
        model=resolved.id,
        base_model=resolved.base.name,
        init_adapter=resolved.adapter_key,
        training_file=training.id,
        validation_file=validation.id if validation else None,
        hyperparameters=hyper,
        method={"type": method_type.value, **({method_type.value: settings} if settings else {})},
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


def method_of(req: CreateJobRequest) -> MethodType:
    """``method.type`` (``supervised`` when absent, as on OpenAI), refused with a 400 when selftune
    does not train it or the request's method settings belong to another type."""
    if req.method is None:
        return MethodType.SUPERVISED
    kind = req.method.type
    if kind not in TRAINED:  # every type OpenAI has is trained; a newer one would land here
        raise InvalidRequest(f"method.type {kind.value!r} is not supported", param="method.type")
    for other in MethodType:
        if other != kind and getattr(req.method, other.value) is not None:
            raise InvalidRequest(
                f"method.{other} was sent, but method.type is {kind.value!r}; put the settings under method.{kind}.",
                param=f"method.{other}",
            )
    return kind


def hyperparameters(req: CreateJobRequest, kind: MethodType) -> dict[str, Any]:
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
    return apply(store, store.get_job(owner, job_id), JobAction.CANCEL)


def pause(store: Store, owner: str, job_id: str) -> JobRecord:
    """A queued job pauses at once; a running one becomes ``pausing`` until its state is saved."""
    return apply(store, store.get_job(owner, job_id), JobAction.PAUSE)


def resume(store: Store, owner: str, job_id: str) -> JobRecord:
    return apply(store, store.get_job(owner, job_id), JobAction.RESUME)


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
        wrong = format_mismatch(rec.filename, str(verdict.get("format")), job.method_type)
        if wrong:
            return fail(store, job, "invalid_file_format", wrong, param)
        n = int(verdict.get("n_examples", 0))
        if param == "training_file" and n < MIN_EXAMPLES:
            message = f"Training file has {n} example(s), but must have at least {MIN_EXAMPLES} examples"
            return fail(store, job, "invalid_n_examples", message, param)
    return apply(store, job, JobAction.VALIDATED)


def _publish_evaluation(evals: Evals, job: JobRecord, files: JobDir, events: list[tuple[str, str]]) -> str | None:
    """The job's evaluation report (when it has one) as an eval with a run per model, named in an
    event; a failure here is a warning, never the job's: the report stays a result file either way."""
    if not files.eval_json.is_file():
        return None
    from selftune.eval.on_evals import publish_job_report

    try:
        report = json.loads(files.eval_json.read_text(encoding="utf-8"))
        eval_id = publish_job_report(evals, job.owner, job.id, job.model_name, job.base_model, report)
    except Exception as e:  # the evaluation is extra; the trained model is what the job owes
        log.warning("publishing the evaluation of %s failed", job.id, exc_info=True)
        events.append(("warn", f"The evaluation was not added to the Evals API: {type(e).__name__}: {e}"))
        return None
    events.append(("info", f"Evaluation: eval {eval_id}, base and fine-tuned side by side at /#/evals/{eval_id}"))
    return eval_id


def fail(store: Store, job: JobRecord, code: str, message: str, param: str | None = None) -> JobRecord:
    error = {"code": code, "message": message, "param": param}
    return apply(store, job, JobAction.FAIL, {"error": error}, [("error", message)])


def record_checkpoint(
    store: Store, job: JobRecord, step: int, metrics: dict[str, Any], path: str, kept: list[str]
) -> None:
    store.put_checkpoint(CheckpointRecord(random_id("ftckpt_"), job.id, now(), step, metrics, path), keep=kept)


def succeed(
    store: Store, blobs: Blobs, home: Path, job: JobRecord, files: JobDir, done: Done, catalog: Catalog | None = None
) -> JobRecord:
    """Upload the result files, register the model and its checkpoints, and finish the job, in one
    move; if the job was cancelled in the last moment, nothing is registered and the results go.
    With the ``catalog``, the end-of-job evaluation also becomes an eval of the Evals API."""
    results = [register_result(store, blobs, job.owner, files.metrics, "step_metrics.csv", job.id)]
    # The end-of-job evaluation (when the job had a validation file) rides along as result files.
    for path, target in ((files.eval_html, "eval_report.html"), (files.eval_json, "eval_report.json")):
        if path.is_file():
            results.append(register_result(store, blobs, job.owner, path, target, job.id))
    crash_point("job.results")
    ckpts, _ = store.list_checkpoints(job.id, limit=1000)
    created = now()
    adapter = files.adapter.relative_to(home).as_posix()  # its key in the store (``selftune.storage``)
    models = [ModelRecord(job.model_name, job.owner, created, job.base_model, adapter, job.id)]
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
        "quality": done.quality,
    }
    events: list[tuple[str, str]] = []  # OpenAI's last two events stay last
    evals = Evals(store, blobs, catalog) if catalog is not None else None
    published = _publish_evaluation(evals, job, files, events) if evals is not None else None
    crash_point("job.evaluated")
    events += [
        ("info", f"New fine-tuned model created: {job.model_name}"),
        ("info", "The job has successfully completed"),
    ]
    try:
        job = apply(store, job, JobAction.SUCCEED, values, events, models)
    except InvalidStatus:
        for r in results:
            store.delete_file(job.owner, r.id)
            blobs.delete(r.id)
        if evals is not None and published is not None:
            evals.evals.delete(job.owner, published)
        raise
    finally:
        files.state.unlink(missing_ok=True)  # only needed to continue; the adapters stay
    on = f" on {done.world_size} processes" if done.world_size > 1 else ""
    record_throughput(home, job.base_model, done.tokens_per_second, job.hyperparameters.batch_size, f"job {job.id}{on}")
    return job
