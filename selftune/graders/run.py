"""Running a grader on one sample: the reward, and OpenAI's metadata (error flags, sub-rewards,
the judges' token usage). One implementation for ``/graders/run``, eval runs and reinforcement jobs.

A grader's failure is never an exception here: the reward is 0 and an error flag says why, as
OpenAI reports it (``python_grader_runtime_error``, ``model_grader_parse_error``, ...). Judges
(``score_model``, ``label_model``) answer through ``Judge``, which the caller provides (the server's
own models, through the alias table), constrained to a JSON schema so their answer always parses.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selftune.errors import SelftuneError
from selftune.graders import formula, python_grader, template
from selftune.graders.check import message_texts
from selftune.graders.similarity import METRICS, MetricUnavailable
from selftune.schemas.graders import (
    GraderErrors,
    GraderMessage,
    LabelModelGrader,
    MultiGrader,
    PythonGrader,
    RunGraderMetadata,
    RunGraderResponse,
    SamplingParams,
    ScoreModelGrader,
    StringCheckGrader,
    TextSimilarityGrader,
)


@dataclass
class JudgeAnswer:
    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


Judge = Callable[[str, list[dict[str, str]], dict[str, Any], SamplingParams | None], Awaitable[JudgeAnswer]]
"""``judge(model, messages, json_schema, sampling_params)``: a judge model's answer."""


@dataclass
class Context:
    judge: Judge
    python_timeout: float = 120.0
    hidden: list[Path] = field(default_factory=list)
    """Folders a python grader must not see (the selftune home)."""
    python_slots: python_grader.Slots | None = None
    """The server's bound on python graders at once (None: no bound, one thread each)."""
    owner: str = ""
    background: bool = False
    """Work nobody waits on as it runs (an eval run): it waits for a python grader's slot, not a 429."""


@dataclass
class Graded:
    name: str
    type: str
    reward: float = 0.0
    errors: GraderErrors = field(default_factory=GraderErrors)
    sub_rewards: dict[str, float] = field(default_factory=dict)
    usage: dict[str, dict[str, int]] = field(default_factory=dict)
    """Judges' tokens per model."""
    sampled_model_name: str | None = None
    label: str | None = None
    execution_time: float = 0.0

    @property
    def errored(self) -> bool:
        return any(v is True for v in self.errors.model_dump().values())

    def response(self) -> RunGraderResponse:
        tokens = sum(u["total_tokens"] for u in self.usage.values()) if self.usage else None
        return RunGraderResponse(
            reward=self.reward,
            metadata=RunGraderMetadata(
                name=self.name,
                type=self.type,
                errors=self.errors,
                execution_time=self.execution_time,
                scores=dict(self.sub_rewards),
                token_usage=tokens,
                sampled_model_name=self.sampled_model_name,
            ),
            sub_rewards=dict(self.sub_rewards),
            model_grader_token_usage_per_model=self.usage,
        )


def grade_answers(
    grader: Any, texts: Sequence[str], items: Sequence[dict[str, Any]], ctx: Context, *, json_expected: bool = False
) -> list[Graded]:
    """Model answers graded all at once, from outside an event loop (a training step, a bench's reward
    function); python graders run in threads, each in its sandbox."""

    async def all_of() -> list[Graded]:
        samples = (answer_sample(t, item, json_expected=json_expected) for t, item in zip(texts, items, strict=True))
        return list(
            await asyncio.gather(*(grade(grader, s, item, ctx) for s, item in zip(samples, items, strict=True)))
        )

    return asyncio.run(all_of())


def answer_sample(text: str, item: dict[str, Any], *, json_expected: bool = False) -> dict[str, Any]:
    """``sample`` for a model's answer to a prompts line. Where the line offers ``tools`` (or
    ``functions``), the calls the answer makes, in the form the model was shown them
    (``inference.tools.parse_calls``), are ``output_tools`` as OpenAI's ``tool_calls`` are written,
    and ``output_text`` is the text outside them, as a served answer's message would be."""
    if not (item.get("tools") or item.get("functions")):
        return template.sample_namespace(text, json_expected=json_expected)
    from selftune.inference.tools import parse_calls  # the serving side's parser, only where tools are offered

    content, calls = parse_calls(text)
    if not calls:
        return template.sample_namespace(text, json_expected=json_expected)
    tools = [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in calls]
    return template.sample_namespace(content or "", json_expected=json_expected, tools=tools)


async def no_judge(*_: Any) -> JudgeAnswer:
    """The judge where there is none (a training job, a bench): model graders are refused before they get here."""
    raise RuntimeError("model graders do not run here: there is no judge model")


SCORE_SCHEMA = {
    "type": "object",
    "properties": {"result": {"type": "number"}, "steps": {"type": "array", "items": {"type": "string"}}},
    "required": ["result"],
    "additionalProperties": False,
}


async def grade(grader: Any, sample: dict[str, Any], item: dict[str, Any], ctx: Context) -> Graded:
    """Grade ``sample`` (a ``template.sample_namespace``) for ``item`` with ``grader``."""
    started = time.perf_counter()
    out = Graded(grader.name, grader.type)
    try:
        out.reward = await _score(grader, {"item": item, "sample": sample}, ctx, out)
    except template.TemplateError as e:
        # An answer that is not the JSON a template reads, or an item without the field it names.
        setattr(out.errors, "sample_parse_error" if "{{sample." in str(e) else "invalid_variable_error", True)
        out.reward = 0.0
    out.execution_time = time.perf_counter() - started
    return out


async def _score(grader: Any, ns: dict[str, Any], ctx: Context, out: Graded) -> float:
    if isinstance(grader, StringCheckGrader):
        text, ref = template.render(grader.input, ns), template.render(grader.reference, ns)
        return float(
            {"eq": text == ref, "ne": text != ref, "like": ref in text, "ilike": ref.lower() in text.lower()}[
                grader.operation
            ]
        )
    if isinstance(grader, TextSimilarityGrader):
        text, ref = template.render(grader.input, ns), template.render(grader.reference, ns)
        try:
            return await asyncio.to_thread(METRICS[grader.evaluation_metric], text, ref)
        except MetricUnavailable as e:
            out.errors.other_error = True
            out.errors.model_grader_server_error_details = str(e)
            return 0.0
    if isinstance(grader, PythonGrader):

        def run() -> python_grader.PythonOutcome:
            return python_grader.run(
                grader.source, ns["sample"], ns["item"], timeout=ctx.python_timeout, hidden=ctx.hidden
            )

        slots = ctx.python_slots
        got = await (slots.run(ctx.owner, ctx.background, run) if slots else asyncio.to_thread(run))
        if got.server_error:
            out.errors.python_grader_server_error = True
            out.errors.python_grader_server_error_type = got.server_error
        elif got.runtime_error:
            out.errors.python_grader_runtime_error = True
            out.errors.python_grader_runtime_error_details = got.runtime_error
        return got.reward
    if isinstance(grader, ScoreModelGrader | LabelModelGrader):
        return await _judge(grader, ns, ctx, out)
    assert isinstance(grader, MultiGrader)
    return await _multi(grader, ns, ctx, out)


async def _judge(grader: ScoreModelGrader | LabelModelGrader, ns: dict[str, Any], ctx: Context, out: Graded) -> float:
    messages = render_messages(grader.input, ns)
    if isinstance(grader, LabelModelGrader):
        schema: dict[str, Any] = {
            "type": "object",
            "properties": {"result": {"type": "string", "enum": grader.labels}},
            "required": ["result"],
            "additionalProperties": False,
        }
        sampling = None
    else:
        schema, sampling = SCORE_SCHEMA, grader.sampling_params
    try:
        answer = await ctx.judge(grader.model, messages, schema, sampling)
    except SelftuneError as e:
        out.errors.model_grader_server_error = True
        out.errors.model_grader_server_error_details = e.message
        return 0.0
    out.sampled_model_name = answer.model
    used = out.usage.setdefault(answer.model, {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0})
    used["prompt_tokens"] += answer.prompt_tokens
    used["completion_tokens"] += answer.completion_tokens
    used["total_tokens"] += answer.prompt_tokens + answer.completion_tokens
    try:
        result = json.loads(answer.text)["result"]
    except (ValueError, KeyError, TypeError):
        out.errors.model_grader_parse_error = True
        if answer.finish_reason == "length":
            out.errors.truncated_observation_error = True
        return 0.0
    if isinstance(grader, LabelModelGrader):
        out.label = str(result)
        return float(out.label in grader.passing_labels)
    low, high = grader.range or [0.0, 1.0]
    if isinstance(result, bool) or not isinstance(result, int | float) or not low <= result <= high:
        out.errors.model_grader_parse_error = True
        return 0.0
    return float(result)


def render_messages(messages: Sequence[GraderMessage], ns: dict[str, Any]) -> list[dict[str, str]]:
    """Messages with their templates filled in, each content one text (its parts a line each)."""
    return [
        {"role": m.role, "content": "\n".join(template.render(t, ns) for t in message_texts(m, "input"))}
        for m in messages
    ]


async def _multi(grader: MultiGrader, ns: dict[str, Any], ctx: Context, out: Graded) -> float:
    named = grader.named()
    try:
        tree = formula.parse(grader.calculate_output, set(named))
    except formula.VariableError:
        out.errors.invalid_variable_error = True
        return 0.0
    except formula.FormulaError:
        out.errors.formula_parse_error = True
        return 0.0
    results = await asyncio.gather(*(grade(sub, ns["sample"], ns["item"], ctx) for sub in named.values()))
    for key, sub in zip(named, results, strict=True):
        out.sub_rewards[key] = sub.reward
        for flag, value in sub.errors.model_dump().items():
            if value and not getattr(out.errors, flag):
                setattr(out.errors, flag, value)
        for model, used in sub.usage.items():
            mine = out.usage.setdefault(model, {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0})
            for k in mine:
                mine[k] += used[k]
        out.sampled_model_name = out.sampled_model_name or sub.sampled_model_name
    try:
        return formula.evaluate(tree, out.sub_rewards)
    except (ArithmeticError, ValueError, TypeError):
        out.errors.other_error = True
        return 0.0
