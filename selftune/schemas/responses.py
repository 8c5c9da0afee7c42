"""The Responses API: the request, the ``response`` object and its output items (openai ``types/responses``).

Only what a text model can honour is accepted: ``input`` as a string or a list of messages and
function-call items, ``instructions``, sampling, ``max_output_tokens``, function tools, ``text.format``
(JSON mode and schemas), ``store`` and ``previous_response_id``. Hosted tools, reasoning effort,
background mode and the rest are refused by name (``unsupported``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from selftune.schemas.common import Request, Response, is_none
from selftune.statuses import ItemStatus, ResponseStatus

TEXT_PARTS = ("input_text", "output_text", "text")


class ResponseCreateRequest(Request):
    model: str
    input: str | list[dict[str, Any]] = Field(min_length=1)
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stream: bool | None = False
    store: bool | None = True
    previous_response_id: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    user: str | None = None
    # Accepted so that they can be refused by name, never silently ignored.
    background: bool | None = None
    conversation: Any = None
    prompt: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    include: list[str] | None = None
    top_logprobs: int | None = None

    @field_validator("tools")
    @classmethod
    def _function_tools(cls, v: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        for i, tool in enumerate(v or []):
            if tool.get("type") != "function":
                raise ValueError(
                    f"tools[{i}] is a {tool.get('type')!r} tool: only function tools run on a self-hosted model"
                )
            if not isinstance(tool.get("name"), str):
                raise ValueError(f'tools[{i}] must be {{"type": "function", "name": ..., "parameters": ...}}')
        return v

    def unsupported(self) -> list[tuple[str, str]]:
        """(parameter, why) for each parameter sent that selftune cannot honour."""
        out = []
        if self.background:
            out.append(("background", "background mode is not supported; leave it out and wait for the response"))
        if self.conversation is not None:
            out.append(("conversation", "conversations are not stored here; chain with previous_response_id"))
        if self.prompt is not None:
            out.append(("prompt", "stored prompts are not available; send the input"))
        if self.reasoning and self.reasoning.get("effort") not in (None, "none"):
            out.append(("reasoning", "these models do not reason; leave reasoning out"))
        if self.include:
            out.append(("include", f"nothing extra can be included ({', '.join(self.include)}); leave include out"))
        if self.top_logprobs:
            out.append(("top_logprobs", "log probabilities are not returned yet; leave top_logprobs out"))
        if self.truncation == "auto":
            out.append(("truncation", "truncation 'auto' is not supported: long inputs are a 400; send less"))
        fmt = (self.text or {}).get("format") or {}
        if fmt.get("type") not in (None, "text", "json_object", "json_schema"):
            out.append(("text.format", f"text format {fmt.get('type')!r} is not supported"))
        return out


class OutputText(Response):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


class OutputMessage(Response):
    type: Literal["message"] = "message"
    id: str
    status: ItemStatus
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class FunctionCallItem(Response):
    type: Literal["function_call"] = "function_call"
    id: str
    call_id: str
    name: str
    arguments: str
    status: ItemStatus = ItemStatus.COMPLETED


class InputText(Response):
    type: Literal["input_text"] = "input_text"
    text: str


class InputMessageItem(Response):
    """A user, system or developer message of a response's ``input``, as ``input_items`` lists it."""

    type: Literal["message"] = "message"
    id: str
    status: Literal[ItemStatus.COMPLETED] = ItemStatus.COMPLETED
    role: Literal["user", "system", "developer"]
    content: list[InputText]


class FunctionCallOutputItem(Response):
    type: Literal["function_call_output"] = "function_call_output"
    id: str
    call_id: str
    output: str
    status: Literal[ItemStatus.COMPLETED] = ItemStatus.COMPLETED


InputItem = InputMessageItem | OutputMessage | FunctionCallItem | FunctionCallOutputItem


class InputItemList(Response):
    object: Literal["list"] = "list"
    data: list[InputItem]
    first_id: str | None
    last_id: str | None
    has_more: bool


class InputTokensDetails(Response):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(Response):
    reasoning_tokens: int = 0


class ResponseUsage(Response):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class ResponseObject(Response):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    completed_at: int | None = None
    status: ResponseStatus
    error: dict[str, Any] | None = None
    incomplete_details: dict[str, Any] | None = None
    instructions: str | None
    max_output_tokens: int | None
    model: str
    output: list[OutputMessage | FunctionCallItem]
    parallel_tool_calls: bool
    previous_response_id: str | None
    temperature: float
    top_p: float
    tool_choice: str | dict[str, Any]
    tools: list[dict[str, Any]]
    text: dict[str, Any]
    truncation: Literal["disabled"] = "disabled"
    store: bool
    metadata: dict[str, str]
    usage: ResponseUsage | None = None
    user: str | None = Field(default=None, exclude_if=is_none)


class ResponseDeleted(Response):
    id: str
    object: Literal["response"] = "response"
    deleted: bool = True


class StoredResponse(Response):
    """A stored response (``store``, the default): the object as returned, the conversation a chained
    response continues (without the instructions, which OpenAI does not carry over either), and this
    turn's ``input`` as ``GET /responses/{id}/input_items`` lists it."""

    response: ResponseObject
    conversation: list[dict[str, Any]]
    input_items: list[InputItem]

    @property
    def id(self) -> str:
        return self.response.id

    @property
    def status(self) -> ResponseStatus:
        return self.response.status
