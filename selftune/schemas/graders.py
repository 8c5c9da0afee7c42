"""Wire schema of OpenAI's graders and of ``/v1/fine_tuning/alpha/graders/{validate,run}``.

Field names and shapes follow the official OpenAPI spec (``GraderStringCheck`` ... ``GraderMulti``,
``RunGraderRequest``, ``RunGraderResponse``). A grader's own fields are strict (an unknown or
misspelt key is a 400 naming it: a grader that silently ignored ``pass_treshold`` would pass
everything); the request bodies around them accept unknown keys like every request here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from selftune.schemas.common import Request, Response

Metric = Literal[
    "cosine", "fuzzy_match", "bleu", "gleu", "meteor", "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5", "rouge_l"
]
Operation = Literal["eq", "ne", "like", "ilike"]


class _Grader(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StringCheckGrader(_Grader):
    type: Literal["string_check"]
    name: str
    input: str
    reference: str
    operation: Operation


class TextSimilarityGrader(_Grader):
    type: Literal["text_similarity"]
    name: str
    input: str
    reference: str
    evaluation_metric: Metric
    pass_threshold: float | None = None
    """Evals only: an item passes at ``score >= pass_threshold``."""


class ContentPart(BaseModel):
    """``input_text`` or ``output_text`` (images and audio are refused by ``graders.check``)."""

    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class GraderMessage(BaseModel):
    """An ``EvalItem``: a message whose content may hold templates."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["user", "assistant", "system", "developer"]
    content: str | ContentPart | list[ContentPart]
    type: Literal["message"] | None = None


class SamplingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seed: int | None = None
    top_p: float | None = Field(default=None, ge=0, le=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_completions_tokens: int | None = Field(default=None, ge=1)
    reasoning_effort: str | None = None


class ScoreModelGrader(_Grader):
    type: Literal["score_model"]
    name: str
    model: str
    input: list[GraderMessage]
    range: Annotated[list[float], Field(min_length=2, max_length=2)] | None = None
    sampling_params: SamplingParams | None = None
    pass_threshold: float | None = None
    """Evals only: an item passes at ``score >= pass_threshold``."""


class LabelModelGrader(_Grader):
    type: Literal["label_model"]
    name: str
    model: str
    input: list[GraderMessage]
    labels: Annotated[list[str], Field(min_length=1)]
    passing_labels: Annotated[list[str], Field(min_length=1)]


class PythonGrader(_Grader):
    type: Literal["python"]
    name: str
    source: str
    image_tag: str | None = None
    pass_threshold: float | None = None
    """Evals only: an item passes at ``score >= pass_threshold``."""


Single = Annotated[
    StringCheckGrader | TextSimilarityGrader | ScoreModelGrader | LabelModelGrader | PythonGrader,
    Field(discriminator="type"),
]


class MultiGrader(_Grader):
    type: Literal["multi"]
    name: str
    graders: dict[str, Single] | Single
    """Named graders, whose names the formula uses (as the RFT guide writes it), or one grader, named
    by its ``name`` (as the SDK's type has it)."""
    calculate_output: str
    pass_threshold: float | None = None

    def named(self) -> dict[str, Any]:
        return self.graders if isinstance(self.graders, dict) else {self.graders.name: self.graders}


Grader = Annotated[
    StringCheckGrader | TextSimilarityGrader | ScoreModelGrader | LabelModelGrader | PythonGrader | MultiGrader,
    Field(discriminator="type"),
]


class ValidateGraderRequest(Request):
    grader: Grader


class ValidateGraderResponse(Response):
    grader: dict[str, Any]


class RunGraderRequest(Request):
    grader: Grader
    model_sample: str
    item: dict[str, Any] | None = None


class GraderErrors(Response):
    formula_parse_error: bool = False
    sample_parse_error: bool = False
    truncated_observation_error: bool = False
    unresponsive_reward_error: bool = False
    invalid_variable_error: bool = False
    other_error: bool = False
    python_grader_server_error: bool = False
    python_grader_server_error_type: str | None = None
    python_grader_runtime_error: bool = False
    python_grader_runtime_error_details: str | None = None
    model_grader_server_error: bool = False
    model_grader_refusal_error: bool = False
    model_grader_parse_error: bool = False
    model_grader_server_error_details: str | None = None
    # In openai-python's type (not yet in the spec): judges reached through an API. Never set here.
    api_model_grader_parse_error: bool = False
    api_model_grader_refusal_error: bool = False
    api_model_grader_server_error: bool = False
    api_model_grader_server_error_details: str | None = None


class RunGraderMetadata(Response):
    name: str
    type: str
    errors: GraderErrors
    execution_time: float
    scores: dict[str, Any]
    token_usage: int | None
    sampled_model_name: str | None


class RunGraderResponse(Response):
    reward: float
    metadata: RunGraderMetadata
    sub_rewards: dict[str, Any]
    model_grader_token_usage_per_model: dict[str, Any]
