"""The judges of ``score_model`` and ``label_model`` graders: models this server serves, called
in-process through the same code as ``/v1/chat/completions`` (so a grader's ``model`` resolves
through the alias table: ``gpt-4o`` can name a local judge), their answers constrained to the
grader's JSON schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from selftune.graders.run import Context, Judge, JudgeAnswer
from selftune.schemas.chat import ChatCompletion, ChatCompletionRequest
from selftune.schemas.graders import SamplingParams
from selftune.services import Services
from selftune.serving.chat import chat

JUDGE_MAX_TOKENS = 256
"""A judge's answer when the grader sets no ``max_completions_tokens``: a score, or a label."""


def judge_for(services: Services, owner: str) -> Judge:
    async def judge(
        model: str, messages: list[dict[str, str]], schema: dict[str, Any], sampling: SamplingParams | None
    ) -> JudgeAnswer:
        s = sampling or SamplingParams()
        body = ChatCompletionRequest.model_validate(
            {
                "model": model,
                "messages": messages,
                "response_format": {"type": "json_schema", "json_schema": {"name": "grade", "schema": schema}},
                "temperature": 0.0 if s.temperature is None else s.temperature,
                "top_p": s.top_p or None,
                "seed": s.seed,
                "max_completion_tokens": s.max_completions_tokens or JUDGE_MAX_TOKENS,
            }
        )
        answer = await chat(body, services, owner, None)
        assert isinstance(answer, ChatCompletion)  # not streamed
        choice = answer.choices[0]
        usage = answer.usage
        return JudgeAnswer(
            text=choice.message.content or "",
            model=answer.model,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            finish_reason=choice.finish_reason or "stop",
        )

    return judge


def context(services: Services, owner: str) -> Context:
    """How graders run for ``owner`` on this server."""
    settings = services.settings
    hidden = [settings.home]
    if (settings.storage_url or "").startswith("file:"):  # a shared folder: every owner's files
        hidden.append(Path(urlparse(settings.storage_url or "").path))
    return Context(judge_for(services, owner), settings.python_grader_timeout, hidden)
