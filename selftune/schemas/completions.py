"""Legacy Completions: the request and the ``text_completion`` object (openai ``types/completion.py``).

The streamed chunks have the same shape as the response (unlike chat's): each carries a piece of
one choice's ``text``, ``finish_reason`` is null until that choice ends, and with
``stream_options.include_usage`` a last chunk has no choices and the usage.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from selftune.schemas.chat import CompletionUsage, StopSequences, StreamOptions
from selftune.schemas.common import Response, is_none

PromptInput = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(StopSequences):
    model: str
    prompt: PromptInput = "<|endoftext|>"
    """OpenAI's default when the prompt is left out: the end-of-text token, as a string."""
    max_tokens: int | None = Field(default=16, ge=1)
    """OpenAI's default is 16 (not the context); ``null`` means as many as the context allows."""
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int | None = Field(default=None, ge=1, le=128)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    echo: bool | None = False
    seed: int | None = None
    # Accepted so that they can be refused by name (``unsupported``), never silently ignored.
    suffix: str | None = None
    logprobs: int | None = None
    best_of: int | None = None
    logit_bias: dict[str, float] | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None

    @property
    def prompts(self) -> list[str | list[int]]:
        """Each prompt: text, or token ids (a list of ints is one prompt; a list of lists, several)."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]

    def unsupported(self) -> list[tuple[str, str]]:
        """(parameter, why) for each parameter sent that selftune cannot honour."""
        out = []
        if self.suffix:
            out.append(("suffix", "insertion (suffix) is not supported by these models; leave suffix out"))
        if self.logprobs is not None:
            out.append(("logprobs", "log probabilities are not returned yet; leave logprobs out"))
        if self.best_of not in (None, 1):
            out.append(("best_of", "best_of needs log probabilities, which are not returned yet; use n"))
        if self.logit_bias:
            out.append(("logit_bias", "logit_bias is not supported; leave it out"))
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(self, name):
                out.append((name, f"{name} is not supported; leave it out or send 0"))
        return out


class CompletionChoice(Response):
    index: int
    text: str
    logprobs: None = None
    finish_reason: Literal["stop", "length", "content_filter"] | None


class Completion(Response):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage | None = Field(default=None, exclude_if=is_none)
    """Absent from streamed chunks but the last one (with ``stream_options.include_usage``)."""
