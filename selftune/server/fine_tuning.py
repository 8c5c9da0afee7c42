"""``/v1/fine_tuning/jobs``: create, list, retrieve, cancel, pause, resume, events and checkpoints,
plus ``POST /v1/fine_tuning/jobs/estimate`` (selftune's own: what a create would cost).

Handlers are thin: ``selftune.jobs`` owns the lifecycle, the worker does the training, and this
module only turns records into OpenAI's wire objects. The action POSTs (cancel, pause, resume)
declare no body: the v1 SDK sends an empty JSON body and the legacy one none at all.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from selftune import jobs
from selftune.schemas.fine_tuning import (
    Checkpoint,
    CreateJobRequest,
    CursorPage,
    FineTuningJob,
    JobError,
    JobEvent,
    JobQuality,
    ResolvedHyperparameters,
)
from selftune.server.deps import OwnerDep, ServicesDep
from selftune.server.edge import Route
from selftune.statuses import JobStatus
from selftune.store import CheckpointRecord, EventRecord, JobRecord

router = APIRouter(tags=["fine-tuning"], route_class=Route)

Limit = Annotated[int, Query(ge=1, le=1000)]


def job_to_wire(rec: JobRecord) -> FineTuningJob:
    return FineTuningJob(
        id=rec.id,
        created_at=rec.created_at,
        # OpenAI sends an all-null error object until a job fails; v1 code reads job.error.code.
        error=JobError(**rec.error) if rec.error else JobError(),
        fine_tuned_model=rec.fine_tuned_model,
        finished_at=rec.finished_at,
        hyperparameters=ResolvedHyperparameters(**rec.hyperparameters.common()),
        model=rec.model,
        organization_id=f"org-{rec.owner}",
        result_files=rec.result_files,
        seed=rec.seed,
        status=rec.status,
        trained_tokens=rec.trained_tokens,
        training_file=rec.training_file,
        validation_file=rec.validation_file,
        estimated_finish=rec.estimated_finish if rec.status == JobStatus.RUNNING else None,
        integrations=rec.integrations or [],
        metadata=rec.metadata,
        method=rec.method_with_hyperparameters(),
        user_provided_suffix=rec.suffix,
        quality=JobQuality(**rec.quality) if rec.quality else None,
    )


def event_to_wire(rec: EventRecord) -> JobEvent:
    return JobEvent(
        id=rec.id,
        created_at=rec.created_at,
        level=rec.level,
        message=rec.message,
        type="metrics" if rec.type == "metrics" else "message",
        data=rec.data,
    )


def checkpoint_to_wire(rec: CheckpointRecord, job: JobRecord) -> Checkpoint:
    return Checkpoint(
        id=rec.id,
        created_at=rec.created_at,
        fine_tuned_model_checkpoint=f"{job.model_name}:ckpt-step-{rec.step_number}",
        fine_tuning_job_id=job.id,
        metrics={k: float(v) for k, v in rec.metrics.items() if isinstance(v, int | float)},
        step_number=rec.step_number,
    )


@router.post("/fine_tuning/jobs")
async def create_job(body: CreateJobRequest, services: ServicesDep, owner: OwnerDep) -> FineTuningJob:
    # Counting the training examples reads the file: keep it off the event loop.
    wandb = services.settings.wandb_projects if services.keys else None  # local mode: one owner, any project
    rec = await run_in_threadpool(jobs.create, services.store, services.blobs, services.catalog, owner, body, wandb)
    return job_to_wire(rec)


@router.post("/fine_tuning/jobs/estimate")
async def estimate_job(body: CreateJobRequest, services: ServicesDep, owner: OwnerDep) -> dict[str, Any]:
    """selftune's own: the body of a create request in, tokens, epochs, steps and time out."""
    return await run_in_threadpool(
        jobs.estimate, services.store, services.blobs, services.catalog, services.settings.home, owner, body
    )


@router.get("/fine_tuning/jobs")
def list_jobs(
    request: Request, services: ServicesDep, owner: OwnerDep, limit: Limit = 20, after: str | None = None
) -> CursorPage[FineTuningJob]:
    # The SDK sends metadata={"k": "v"} as the query parameters metadata[k]=v.
    metadata = {
        key[len("metadata[") : -1]: value
        for key, value in request.query_params.items()
        if key.startswith("metadata[") and key.endswith("]")
    }
    recs, has_more = services.store.list_jobs(owner, limit=limit, after=after, metadata=metadata or None)
    return CursorPage[FineTuningJob](data=[job_to_wire(r) for r in recs], has_more=has_more)


@router.get("/fine_tuning/jobs/{job_id}")
def retrieve_job(job_id: str, services: ServicesDep, owner: OwnerDep) -> FineTuningJob:
    return job_to_wire(services.store.get_job(owner, job_id))


@router.post("/fine_tuning/jobs/{job_id}/cancel")
def cancel_job(job_id: str, services: ServicesDep, owner: OwnerDep) -> FineTuningJob:
    return job_to_wire(jobs.cancel(services.store, owner, job_id))


@router.post("/fine_tuning/jobs/{job_id}/pause")
def pause_job(job_id: str, services: ServicesDep, owner: OwnerDep) -> FineTuningJob:
    return job_to_wire(jobs.pause(services.store, owner, job_id))


@router.post("/fine_tuning/jobs/{job_id}/resume")
def resume_job(job_id: str, services: ServicesDep, owner: OwnerDep) -> FineTuningJob:
    return job_to_wire(jobs.resume(services.store, owner, job_id))


@router.get("/fine_tuning/jobs/{job_id}/events")
def list_events(
    job_id: str, services: ServicesDep, owner: OwnerDep, limit: Limit = 20, after: str | None = None
) -> CursorPage[JobEvent]:
    job = services.store.get_job(owner, job_id)
    recs, has_more = services.store.list_events(job.id, limit=limit, after=after)
    return CursorPage[JobEvent](data=[event_to_wire(r) for r in recs], has_more=has_more)


@router.get("/fine_tuning/jobs/{job_id}/checkpoints")
def list_checkpoints(
    job_id: str, services: ServicesDep, owner: OwnerDep, limit: Limit = 10, after: str | None = None
) -> CursorPage[Checkpoint]:
    job = services.store.get_job(owner, job_id)
    recs, has_more = services.store.list_checkpoints(job.id, limit=limit, after=after)
    data = [checkpoint_to_wire(r, job) for r in recs]
    return CursorPage[Checkpoint](
        data=data,
        has_more=has_more,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
    )
