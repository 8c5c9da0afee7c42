"""Wire schema of the Evals API: ``/v1/evals``, its runs and their output items (OpenAI's ``Eval``,
``EvalRun``, ``EvalRunOutputItem`` and the create requests). Testing criteria are the graders of
``schemas.graders``. What is stored is these objects (in the ``objects`` table), plus ``status`` on an
eval, which has none on the wire."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from selftune.schemas.common import Request, Response
from selftune.schemas.graders import Grader, GraderMessage
from selftune.statuses import EvalRunStatus


class CustomDataSourceConfig(BaseModel):
    """At creation: ``item_schema``; on the wire: ``schema`` (with ``sample`` when included)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["custom"]
    item_schema: dict[str, Any]
    include_sample_schema: bool = False


class CreateEvalRequest(Request):
    name: str | None = None
    metadata: dict[str, str] | None = None
    data_source_config: CustomDataSourceConfig
    testing_criteria: Annotated[list[Grader], Field(min_length=1)]


class UpdateEvalRequest(Request):
    name: str | None = None
    metadata: dict[str, str] | None = None


class EvalState(StrEnum):
    ACTIVE = "active"


class Eval(Response):
    object: Literal["eval"] = "eval"
    id: str
    name: str
    data_source_config: dict[str, Any]
    testing_criteria: list[dict[str, Any]]
    created_at: int
    metadata: dict[str, str] | None = None
    status: EvalState = Field(default=EvalState.ACTIVE, exclude=True)


class EvalList(Response):
    object: Literal["list"] = "list"
    data: list[Eval]
    first_id: str | None
    last_id: str | None
    has_more: bool


class DeletedEval(Response):
    object: Literal["eval.deleted"] = "eval.deleted"
    deleted: bool = True
    eval_id: str


# --- runs -----------------------------------------------------------------------------------------


class FileContentRow(BaseModel):
    item: dict[str, Any]
    sample: dict[str, Any] | None = None


class FileContentSource(BaseModel):
    type: Literal["file_content"]
    content: list[FileContentRow]


class FileIdSource(BaseModel):
    type: Literal["file_id"]
    id: str


Source = Annotated[FileContentSource | FileIdSource, Field(discriminator="type")]


class TemplateInput(BaseModel):
    type: Literal["template"]
    template: Annotated[list[GraderMessage], Field(min_length=1)]
    """Messages as graders' judges take them (``EvalItem``): text, with templates over ``item``."""


class ItemReferenceInput(BaseModel):
    type: Literal["item_reference"]
    item_reference: str


class SamplingParams(BaseModel):
    model_config = ConfigDict(extra="allow")
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    max_completions_tokens: int | None = Field(default=None, ge=1)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    response_format: dict[str, Any] | None = None


class JsonlDataSource(BaseModel):
    type: Literal["jsonl"]
    source: Source


class CompletionsDataSource(BaseModel):
    """``completions`` (and ``responses``, answered the same way: the model's reply to the rendered
    messages): each item's messages go to ``model``, and the answer is the sample."""

    type: Literal["completions", "responses"]
    model: str
    source: Source
    input_messages: Annotated[TemplateInput | ItemReferenceInput, Field(discriminator="type")] | None = None
    sampling_params: SamplingParams | None = None


DataSource = Annotated[JsonlDataSource | CompletionsDataSource, Field(discriminator="type")]


class CreateEvalRunRequest(Request):
    name: str | None = None
    metadata: dict[str, str] | None = None
    data_source: DataSource


class ResultCounts(Response):
    total: int = 0
    errored: int = 0
    failed: int = 0
    passed: int = 0


class ModelUsage(Response):
    model_name: str
    invocation_count: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0


class CriterionResult(Response):
    testing_criteria: str
    passed: int = 0
    failed: int = 0


class EvalApiError(Response):
    code: str
    message: str


class EvalRun(Response):
    object: Literal["eval.run"] = "eval.run"
    id: str
    eval_id: str
    status: EvalRunStatus
    model: str
    """The sampled model; empty for a run over given samples (the spec's type is a string)."""
    name: str
    created_at: int
    report_url: str
    result_counts: ResultCounts = Field(default_factory=ResultCounts)
    per_model_usage: list[ModelUsage] = Field(default_factory=list)
    per_testing_criteria_results: list[CriterionResult] = Field(default_factory=list)
    data_source: dict[str, Any]
    metadata: dict[str, str] | None = None
    error: EvalApiError = Field(default_factory=lambda: EvalApiError(code="", message=""))
    """Empty strings when nothing failed, as the spec requires the object."""


class EvalRunList(Response):
    object: Literal["list"] = "list"
    data: list[EvalRun]
    first_id: str | None
    last_id: str | None
    has_more: bool


class DeletedEvalRun(Response):
    object: Literal["eval.run.deleted"] = "eval.run.deleted"
    deleted: bool = True
    run_id: str


class OutputItemResult(Response):
    name: str
    type: str
    score: float
    passed: bool
    sample: dict[str, Any] | None = None


class ItemStatus(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    ERROR = "error"


class OutputItem(Response):
    object: Literal["eval.run.output_item"] = "eval.run.output_item"
    id: str
    run_id: str
    eval_id: str
    created_at: int
    status: ItemStatus
    datasource_item_id: int
    datasource_item: dict[str, Any]
    results: list[OutputItemResult]
    sample: dict[str, Any]


class OutputItemList(Response):
    object: Literal["list"] = "list"
    data: list[OutputItem]
    first_id: str | None
    last_id: str | None
    has_more: bool
