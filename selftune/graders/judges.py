"""The judges of ``score_model`` and ``label_model`` graders, their answers constrained to the
grader's JSON schema.

A model this server serves (a base model, an alias, an owner's own or shared ``ft:`` model) is
called in-process through the same code as ``/v1/chat/completions``, so a grader's ``model``
resolves through the alias table: ``gpt-4o`` can name a local judge. Any other model goes to the
OpenAI-compatible API the operator named in ``SELFTUNE_JUDGE_BASE_URL`` (OpenAI itself, vLLM, another
selftune), when there is one; its failures are the grade's ``model_grader_server_error``.
"""

from __future__ import annotations

from typing import Any

import openai

from selftune.errors import Unavailable
from selftune.graders.check import served
from selftune.graders.python_grader import hidden_folders
from selftune.graders.run import Context, Judge, JudgeAnswer
from selftune.schemas.chat import ChatCompletion, ChatCompletionRequest
from selftune.schemas.graders import SamplingParams
from selftune.services import Services
from selftune.serving.admission import BACKGROUND
from selftune.serving.chat import chat

JUDGE_MAX_TOKENS = 256
"""A judge's answer when the grader sets no ``max_completions_tokens``: a score, or a label."""


def judge_for(services: Services, owner: str) -> Judge:
    local = served(services.catalog, owner)
    remote = remote_judge(services.settings.judge_base_url, services.settings.judge_api_key)

    async def judge(
        model: str, messages: list[dict[str, str]], schema: dict[str, Any], sampling: SamplingParams | None
    ) -> JudgeAnswer:
        request = judge_request(model, messages, schema, sampling)
        if remote is not None and not local(model):
            return await remote_call(remote, request)
        answer = await chat(ChatCompletionRequest.model_validate(request), services, owner, None)
        assert isinstance(answer, ChatCompletion)  # not streamed
        return _answer(answer)

    return judge


def judge_request(
    model: str, messages: list[dict[str, str]], schema: dict[str, Any], sampling: SamplingParams | None
) -> dict[str, Any]:
    """The chat completion request a judge answers: greedy unless the grader says otherwise, its
    answer constrained to ``schema``. The server's judges and a reinforcement job's trainer send the same."""
    s = sampling or SamplingParams()
    return {
        "model": model,
        "messages": messages,
        "response_format": {"type": "json_schema", "json_schema": {"name": "grade", "schema": schema}},
        "temperature": 0.0 if s.temperature is None else s.temperature,
        "top_p": s.top_p or None,
        "seed": s.seed,
        "max_completion_tokens": s.max_completions_tokens or JUDGE_MAX_TOKENS,
    }


def remote_judge(base_url: str, api_key: str) -> openai.AsyncOpenAI | None:
    """The operator's judge API, if one is configured (no retries: a failed call is a flagged grade)."""
    if not base_url:
        return None
    return openai.AsyncOpenAI(base_url=base_url, api_key=api_key or "none", max_retries=0, timeout=120)


async def remote_call(client: openai.AsyncOpenAI, request: dict[str, Any]) -> JudgeAnswer:
    body = {k: v for k, v in request.items() if v is not None}
    try:
        return _answer(await client.chat.completions.create(**body))
    except openai.OpenAIError as e:
        raise Unavailable(f"the judge at {client.base_url} failed: {e}") from None


def _answer(completion: Any) -> JudgeAnswer:
    """A judge's answer from a chat completion, ours or the openai SDK's (the same fields)."""
    choice, usage = completion.choices[0], completion.usage
    return JudgeAnswer(
        text=choice.message.content or "",
        model=completion.model,
        prompt_tokens=usage.prompt_tokens if usage else 0,
        completion_tokens=usage.completion_tokens if usage else 0,
        finish_reason=choice.finish_reason or "stop",
    )


def context(services: Services, owner: str) -> Context:
    """How graders run for ``owner`` on this server."""
    settings = services.settings
    slots, background = services.python_graders, BACKGROUND.get()
    return Context(
        judge_for(services, owner), settings.python_grader_timeout, hidden_folders(settings), slots, owner, background
    )
