"""Chat Completions: the request, the response, and streaming chunks (openai ``types/chat``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from selftune.schemas.common import Request, Response

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


class ChatMessage(Request):
    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None

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


class ChatCompletionRequest(Request):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int | None = Field(default=None, ge=1, le=128)
    max_tokens: int | None = Field(default=None, ge=1)
    """Deprecated by OpenAI in favour of ``max_completion_tokens``; both are honoured."""
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None

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


class ChatCompletionMessage(Response):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    annotations: list[Any] = Field(default_factory=list)


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


class ChoiceDelta(Response):
    role: Literal["assistant"] | None = None
    content: str | None = None


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
