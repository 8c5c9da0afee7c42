"""Fine-tuning jobs, their events and checkpoints (openai ``types/fine_tuning``)."""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import Field, field_validator

from selftune.methods import MethodType
from selftune.schemas.common import Request, Response, is_none
from selftune.schemas.graders import Grader
from selftune.statuses import JobStatus

Auto = Literal["auto"]


BatchSize = Annotated[int, Field(ge=1, le=256)]
Epochs = Annotated[int, Field(ge=1, le=50)]
Multiplier = Annotated[float, Field(gt=0)]


class Hyperparameters(Request):
    """Each value is ``"auto"`` or a number; ``"auto"`` is resolved when the job is created (``selftune.methods``)."""

    batch_size: Auto | BatchSize | None = Field(default=None, union_mode="left_to_right")
    learning_rate_multiplier: Auto | Multiplier | None = Field(default=None, union_mode="left_to_right")
    n_epochs: Auto | Epochs | None = Field(default=None, union_mode="left_to_right")


class SupervisedMethod(Request):
    hyperparameters: Hyperparameters | None = None


Beta = Annotated[float, Field(gt=0, le=2)]
RpoAlpha = Annotated[float, Field(ge=0, le=10)]


class DpoHyperparameters(Hyperparameters):
    beta: Auto | Beta | None = Field(default=None, union_mode="left_to_right")
    rpo_alpha: Auto | RpoAlpha | None = Field(default=None, union_mode="left_to_right")
    """selftune's own (OpenAI has no such field): the weight of the next-token loss on the preferred
    output that anchors DPO (``selftune.methods``); 0 turns the anchor off."""


class DpoMethod(Request):
    hyperparameters: DpoHyperparameters | None = None


ComputeMultiplier = Annotated[float, Field(gt=0, le=10)]
EvalInterval = Annotated[int, Field(ge=1)]
EvalSamples = Annotated[int, Field(ge=1)]


class ReinforcementHyperparameters(Hyperparameters):
    """OpenAI's reinforcement hyperparameters; what each maps to is ``selftune.methods``'."""

    eval_interval: Auto | EvalInterval | None = Field(default=None, union_mode="left_to_right")
    eval_samples: Auto | EvalSamples | None = Field(default=None, union_mode="left_to_right")
    compute_multiplier: Auto | ComputeMultiplier | None = Field(default=None, union_mode="left_to_right")
    reasoning_effort: Literal["auto", "default", "low", "medium", "high"] | None = None


class ReinforcementMethod(Request):
    grader: Grader
    response_format: dict[str, Any] | None = None
    """``{"type": "json_schema", "json_schema": {...}}`` (answers then read as ``{{sample.output_json}}``)."""
    hyperparameters: ReinforcementHyperparameters | None = None


class Method(Request):
    type: MethodType
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None
    reinforcement: ReinforcementMethod | None = None


class CreateJobRequest(Request):
    model: str
    training_file: str
    validation_file: str | None = None
    hyperparameters: Hyperparameters | None = None
    """Deprecated by OpenAI in favour of ``method.supervised.hyperparameters``; both are accepted."""
    method: Method | None = None
    suffix: str | None = Field(default=None, min_length=1, max_length=64)
    seed: int | None = Field(default=None, ge=0, le=2147483647)
    metadata: dict[str, str] | None = None
    integrations: list[dict[str, Any]] | None = None

    @field_validator("suffix")
    @classmethod
    def _suffix(cls, v: str | None) -> str | None:
        if v is not None and not all(c.isalnum() or c in "._-" for c in v):
            raise ValueError("suffix may use only letters, digits, '.', '_' and '-' (no ':' or '/')")
        return v

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is not None and (len(v) > 16 or any(len(k) > 64 or len(x) > 512 for k, x in v.items())):
            raise ValueError("metadata holds at most 16 pairs, keys up to 64 and values up to 512 characters")
        return v


class JobError(Response):
    code: str | None = None
    message: str | None = None
    param: str | None = None


class QualityProfile(Response):
    """One model's answers to the held-out prompts, counted (``selftune.eval.quality.Profile``)."""

    answers: int
    ended: int
    empty: int
    repeats: int
    degenerate: int
    most_common: int
    collapsed: bool


class ValidationReward(Response):
    """A reinforcement job's own comparison: both models' mean reward on its grader, greedy answers to
    the validation prompts every evaluation scored."""

    prompts: int
    base: float
    fine_tuned: float


class JobQuality(Response):
    """The quality guard's finding: did the fine-tuned model come out worse than its base?"""

    verdict: Literal["ok", "degenerated"]
    message: str
    prompts: int
    source: str
    base: QualityProfile
    fine_tuned: QualityProfile
    best_checkpoint: str | None = None
    validation_reward: ValidationReward | None = None
    """Reinforcement jobs with a validation file only."""


class ResolvedHyperparameters(Response):
    batch_size: Auto | int
    learning_rate_multiplier: Auto | float
    n_epochs: Auto | int


class FineTuningJob(Response):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobError | None
    fine_tuned_model: str | None
    finished_at: int | None
    hyperparameters: ResolvedHyperparameters
    model: str
    organization_id: str
    result_files: list[str]
    seed: int
    status: JobStatus
    trained_tokens: int | None
    training_file: str
    validation_file: str | None
    estimated_finish: int | None = None
    integrations: list[dict[str, Any]] | None = None
    metadata: dict[str, str] | None = None
    method: dict[str, Any]
    user_provided_suffix: str | None = None
    quality: JobQuality | None = None
    """selftune's own: the quality guard's finding once the job has succeeded (null before)."""


class JobEvent(Response):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"]
    data: dict[str, Any] | None = None


class Checkpoint(Response):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: dict[str, float]
    step_number: int


T = TypeVar("T", FineTuningJob, JobEvent, Checkpoint)


class CursorPage(Response, Generic[T]):
    """A page of jobs, events or checkpoints, newest first. ``has_more`` is always sent: without it
    the SDK's auto-pagination never stops."""

    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool
    first_id: str | None = Field(default=None, exclude_if=is_none)
    last_id: str | None = Field(default=None, exclude_if=is_none)


class CheckpointPermission(Response):
    """A fine-tuned model shared with another owner (``project_id``: an owner here; ``selftune.permissions``)."""

    id: str
    object: Literal["checkpoint.permission"] = "checkpoint.permission"
    created_at: int
    project_id: str


class CheckpointPermissionList(Response):
    object: Literal["list"] = "list"
    data: list[CheckpointPermission]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class CheckpointPermissionDeleted(Response):
    id: str
    object: Literal["checkpoint.permission"] = "checkpoint.permission"
    deleted: bool = True


class CreateCheckpointPermissionRequest(Request):
    project_ids: list[str]
    """Owners (names after a key in ``SELFTUNE_API_KEYS``) to share the model with."""
