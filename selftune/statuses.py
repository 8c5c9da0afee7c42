"""Every status machine, written down once: fine-tuning jobs, batches, uploads and exports (the
pattern is ``selftune.lifecycle``'s), and the statuses of a response and of its output items.

The wire schemas type their ``status`` fields with these enums, the dashboard reads the machines
from the server (``/statuses.js``, built from ``MACHINES``), and the CLI, the benchmarks and the
clients of other servers compare with them: no status is spelled out anywhere else.

A fine-tuning job::

    validating_files -> queued -> running -> succeeded | failed
                          |  ^       |
                          |  |       +-> pausing -> paused --(resume)--> queued
                          +--+-------------------> paused
    any status that is not final --(cancel)--> cancelled

A batch::

    validating -> in_progress -> finalizing -> completed
         |             +-> expired (past expires_at: its unanswered lines are batch_expired)
         +-------------+-> failed (a bad input file, or one deleted before every line was answered)
         +-------------+-> cancelling -> cancelled

An upload: ``pending`` -> ``completed`` | ``cancelled`` | ``expired``.
An export: ``running`` (from its creation: a server claims it and builds it, and another builds it
again if that one dies) -> ``succeeded`` | ``failed``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from selftune.lifecycle import Machine, Transition


class JobStatus(StrEnum):
    """OpenAI's six statuses, plus ``pausing`` and ``paused`` (its pause endpoint returns ``paused`` too)."""

    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    PAUSING = "pausing"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobAction(StrEnum):
    VALIDATED = "validated"  # worker: the files are fine
    START = "start"  # worker: claims a queued job
    PAUSE = "pause"  # API
    PAUSED = "paused"  # worker: the recipe saved its state and stopped
    RESUME = "resume"  # API
    REQUEUE = "requeue"  # worker: its training stopped (shutdown, crash) with state to continue from
    SUCCEED = "succeed"  # worker
    FAIL = "fail"  # worker
    CANCEL = "cancel"  # API


_JOB_FINAL = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
_JOB_UNFINISHED = sorted(set(JobStatus) - set(_JOB_FINAL))

JOBS: Machine[JobStatus, JobAction] = Machine(
    "job",
    "jobs",
    "fine_tuning_job_id",
    JobStatus,
    JobAction,
    (
        Transition(
            JobStatus.VALIDATING_FILES,
            JobAction.VALIDATED,
            JobStatus.QUEUED,
            "Files validated, moving job to queued state",
        ),
        Transition(JobStatus.QUEUED, JobAction.START, JobStatus.RUNNING),
        Transition(JobStatus.QUEUED, JobAction.PAUSE, JobStatus.PAUSED, "Fine-tuning job paused"),
        Transition(
            JobStatus.RUNNING,
            JobAction.PAUSE,
            JobStatus.PAUSING,
            "Pausing fine-tuning job: saving its state at the end of the current step",
        ),
        Transition(JobStatus.RUNNING, JobAction.PAUSED, JobStatus.PAUSED),
        Transition(JobStatus.PAUSING, JobAction.PAUSED, JobStatus.PAUSED),
        Transition(
            JobStatus.PAUSED,
            JobAction.RESUME,
            JobStatus.QUEUED,
            "Fine-tuning job resumed, moving job to queued state",
        ),
        Transition(JobStatus.RUNNING, JobAction.REQUEUE, JobStatus.QUEUED),
        Transition(JobStatus.PAUSING, JobAction.REQUEUE, JobStatus.PAUSED),
        Transition(JobStatus.RUNNING, JobAction.SUCCEED, JobStatus.SUCCEEDED),
        Transition(JobStatus.PAUSING, JobAction.SUCCEED, JobStatus.SUCCEEDED),
        *(Transition(s, JobAction.FAIL, JobStatus.FAILED) for s in _JOB_UNFINISHED),
        *(Transition(s, JobAction.CANCEL, JobStatus.CANCELLED, "Fine-tuning job cancelled") for s in _JOB_UNFINISHED),
    ),
    terminal=_JOB_FINAL,
    claimed=(JobStatus.RUNNING, JobStatus.PAUSING),
    past={JobAction.PAUSE: "paused", JobAction.RESUME: "resumed", JobAction.CANCEL: "cancelled"},
)


class BatchStatus(StrEnum):
    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


class BatchAction(StrEnum):
    VALIDATED = "validated"  # runner: every line is well formed
    FAIL = "fail"  # runner: a bad input file, or one deleted before every line was answered
    FINALIZE = "finalize"  # runner: every line answered; the result files are being written
    COMPLETE = "complete"  # runner
    EXPIRE = "expire"  # runner: past expires_at with lines unanswered
    CANCEL = "cancel"  # API
    STOPPED = "stopped"  # runner: it stopped taking lines after a cancel and wrote the files


BATCHES: Machine[BatchStatus, BatchAction] = Machine(
    "batch",
    "batches",
    "batch_id",
    BatchStatus,
    BatchAction,
    (
        Transition(BatchStatus.VALIDATING, BatchAction.VALIDATED, BatchStatus.IN_PROGRESS),
        Transition(BatchStatus.VALIDATING, BatchAction.FAIL, BatchStatus.FAILED),
        Transition(BatchStatus.IN_PROGRESS, BatchAction.FAIL, BatchStatus.FAILED),
        Transition(BatchStatus.IN_PROGRESS, BatchAction.FINALIZE, BatchStatus.FINALIZING),
        Transition(BatchStatus.FINALIZING, BatchAction.COMPLETE, BatchStatus.COMPLETED),
        Transition(BatchStatus.IN_PROGRESS, BatchAction.EXPIRE, BatchStatus.EXPIRED),
        Transition(BatchStatus.VALIDATING, BatchAction.CANCEL, BatchStatus.CANCELLING),
        Transition(BatchStatus.IN_PROGRESS, BatchAction.CANCEL, BatchStatus.CANCELLING),
        Transition(BatchStatus.CANCELLING, BatchAction.STOPPED, BatchStatus.CANCELLED),
    ),
    terminal=(BatchStatus.FAILED, BatchStatus.COMPLETED, BatchStatus.EXPIRED, BatchStatus.CANCELLED),
    claimed=(BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS, BatchStatus.FINALIZING, BatchStatus.CANCELLING),
    past={BatchAction.CANCEL: "cancelled"},
)


class UploadStatus(StrEnum):
    PENDING = "pending"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class UploadAction(StrEnum):
    COMPLETE = "complete"  # API
    CANCEL = "cancel"  # API
    EXPIRE = "expire"  # the sweeper, an hour after creation


UPLOADS: Machine[UploadStatus, UploadAction] = Machine(
    "upload",
    "uploads",
    "upload_id",
    UploadStatus,
    UploadAction,
    (
        Transition(UploadStatus.PENDING, UploadAction.COMPLETE, UploadStatus.COMPLETED),
        Transition(UploadStatus.PENDING, UploadAction.CANCEL, UploadStatus.CANCELLED),
        Transition(UploadStatus.PENDING, UploadAction.EXPIRE, UploadStatus.EXPIRED),
    ),
    terminal=(UploadStatus.COMPLETED, UploadStatus.CANCELLED, UploadStatus.EXPIRED),
    past={UploadAction.COMPLETE: "completed", UploadAction.CANCEL: "cancelled", UploadAction.EXPIRE: "expired"},
)


class ExportStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class ExportAction(StrEnum):
    SUCCEED = "succeed"  # runner: the export process built and verified the export
    FAIL = "fail"  # runner: the process failed


EXPORTS: Machine[ExportStatus, ExportAction] = Machine(
    "export",
    "exports",
    "export_id",
    ExportStatus,
    ExportAction,
    (
        Transition(ExportStatus.RUNNING, ExportAction.SUCCEED, ExportStatus.SUCCEEDED),
        Transition(ExportStatus.RUNNING, ExportAction.FAIL, ExportStatus.FAILED),
    ),
    terminal=(ExportStatus.SUCCEEDED, ExportStatus.FAILED),
    claimed=(ExportStatus.RUNNING,),
)


class EvalRunStatus(StrEnum):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    CANCELED = "canceled"
    FAILED = "failed"


class EvalRunAction(StrEnum):
    START = "start"  # runner: claimed, items being sampled and graded
    COMPLETE = "complete"  # runner: every item has its output item
    CANCEL = "cancel"  # client: POST /evals/{eval_id}/runs/{run_id}
    FAIL = "fail"  # runner: the data cannot be read, or what nothing expects


EVAL_RUNS: Machine[EvalRunStatus, EvalRunAction] = Machine(
    "run",
    "runs",
    "run_id",
    EvalRunStatus,
    EvalRunAction,
    (
        Transition(EvalRunStatus.QUEUED, EvalRunAction.START, EvalRunStatus.IN_PROGRESS),
        Transition(EvalRunStatus.IN_PROGRESS, EvalRunAction.COMPLETE, EvalRunStatus.COMPLETED),
        Transition(EvalRunStatus.QUEUED, EvalRunAction.CANCEL, EvalRunStatus.CANCELED),
        Transition(EvalRunStatus.IN_PROGRESS, EvalRunAction.CANCEL, EvalRunStatus.CANCELED),
        Transition(EvalRunStatus.QUEUED, EvalRunAction.FAIL, EvalRunStatus.FAILED),
        Transition(EvalRunStatus.IN_PROGRESS, EvalRunAction.FAIL, EvalRunStatus.FAILED),
    ),
    terminal=(EvalRunStatus.COMPLETED, EvalRunStatus.CANCELED, EvalRunStatus.FAILED),
    claimed=(EvalRunStatus.QUEUED, EvalRunStatus.IN_PROGRESS),
    past={EvalRunAction.CANCEL: "canceled"},
)


class ResponseStatus(StrEnum):
    """A response's status (a response has no background life: it is stored finished)."""

    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    INCOMPLETE = "incomplete"
    FAILED = "failed"


class ItemStatus(StrEnum):
    """The status of a response's output item (a message, a function call)."""

    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    INCOMPLETE = "incomplete"


MACHINES: dict[str, Machine[Any, Any]] = {m.name: m for m in (JOBS, BATCHES, UPLOADS, EXPORTS, EVAL_RUNS)}
"""By object name: what ``/statuses.js`` serves the dashboard."""
