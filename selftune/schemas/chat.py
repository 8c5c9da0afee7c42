"""Chat Completions: the request, the response, and streaming chunks (openai ``types/chat``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from selftune.schemas.common import Request, Response, is_none

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


class ChatMessage(Request):
    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    function_call: dict[str, Any] | None = None

    @field_validator("role")
    @classmethod
    def _known_role(cls, v: str) -> str:
        if v not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, not {v!r}")
        return v

    @field_validator("content")
    @classmethod
    def _text_parts_only(cls, v: Any) -> Any:
        if isinstance(v, list):
            for part in v:
                kind = part.get("type")
                if kind != "text" or not isinstance(part.get("text"), str):
                    raise ValueError(f"content part of type {kind!r} is not supported: these models read text only")
        return v


class StreamOptions(Request):
    include_usage: bool | None = None


class StopSequences(Request):
    """``stop``, shared by chat and legacy completions: up to four strings that end a choice."""

    stop: str | list[str] | None = None

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        return v

    @property
    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class ChatCompletionRequest(StopSequences):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int | None = Field(default=None, ge=1, le=128)
    max_tokens: int | None = Field(default=None, ge=1)
    """Deprecated by OpenAI in favour of ``max_completion_tokens``; both are honoured."""
    max_completion_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    functions: list[dict[str, Any]] | None = None
    """Deprecated by OpenAI in favour of ``tools``; answered with ``function_call``, as OpenAI does."""
    function_call: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    # Accepted so that they can be refused by name (``unsupported``), never silently ignored.
    logprobs: bool | None = None
    top_logprobs: int | None = None
    logit_bias: dict[str, float] | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    audio: dict[str, Any] | None = None
    modalities: list[str] | None = None
    prediction: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None

    @field_validator("tools")
    @classmethod
    def _function_tools(cls, v: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        for i, tool in enumerate(v or []):
            fn = tool.get("function")
            if tool.get("type") != "function" or not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise ValueError(
                    f'tools[{i}] must be {{"type": "function", "function": {{"name": ..., "parameters": ...}}}}'
                )
        return v

    def unsupported(self) -> list[tuple[str, str]]:
        """(parameter, why) for each parameter sent that selftune cannot honour."""
        out = []
        if self.logprobs or self.top_logprobs is not None:
            out.append(("logprobs", "log probabilities are not returned yet; leave logprobs and top_logprobs out"))
        if self.logit_bias:
            out.append(("logit_bias", "logit_bias is not supported; leave it out"))
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(self, name):
                out.append((name, f"{name} is not supported; leave it out or send 0"))
        if self.audio is not None or any(m != "text" for m in self.modalities or []):
            out.append(("modalities", "these models produce text only"))
        if self.prediction is not None:
            out.append(("prediction", "predicted outputs are not supported; leave prediction out"))
        if self.web_search_options is not None:
            out.append(("web_search_options", "web search is not available on a self-hosted model"))
        return out


class FunctionCall(Response):
    name: str
    arguments: str
    """A JSON string, as OpenAI sends it."""


class ToolCall(Response):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatCompletionMessage(Response):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    annotations: list[Any] = Field(default_factory=list)
    tool_calls: list[ToolCall] | None = Field(default=None, exclude_if=is_none)
    function_call: FunctionCall | None = Field(default=None, exclude_if=is_none)


class Choice(Response):
    index: int
    message: ChatCompletionMessage
    logprobs: None = None
    finish_reason: FinishReason


class CompletionUsage(Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(Response):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    """The real model that answered (never a migration alias)."""
    choices: list[Choice]
    usage: CompletionUsage


class DeltaFunction(Response):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(Response):
    """A call in a stream: the first delta of a call has ``id``, ``type`` and the name; later ones
    carry argument fragments under the same ``index``."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunction | None = None


class ChoiceDelta(Response):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None
    function_call: DeltaFunction | None = None


class ChunkChoice(Response):
    index: int
    delta: ChoiceDelta
    logprobs: None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(Response):
    """Serialise with ``exclude_unset=True``: a delta carries only the keys it sets, and ``usage``
    appears (as null, or filled on the final chunk) only when ``include_usage`` was asked for."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: CompletionUsage | None = None

    def model_post_init(self, context: Any, /) -> None:
        self.__pydantic_fields_set__.add("object")  # a constant, but it must be on the wire
