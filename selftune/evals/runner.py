"""Runs eval runs in the background of a server: sample each item (or take its given sample), grade
it with every testing criterion, write its output item, and count.

Like the batch runner, each server's runner claims one run at a time with a lease on the database's
clock (``background.ObjectRunner``), so among N servers on one database each run is answered once, and a
run whose server died is taken over once its lease lapses. Output items are written one by one as
they are graded, with ids that hold the run's and the item's position, so a runner that takes a run
over (after a restart, or from a dead server) grades only the items without one, and an item is
never written twice. At most ``SELFTUNE_BATCH_CONCURRENCY`` items are sampled and graded at once,
as background work that yields to interactive requests. A cancel is seen within ``POLL_S``; the
items in flight finish and the rest are not started.

An item passes when every criterion passes: a criterion passes at ``score >= pass_threshold``, whose
default is 1 (``string_check``, ``label_model``, ``python``, ``multi``) or the middle of the range
(``score_model``). An item whose sampling failed, or whose grading set an error flag, is ``error``.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy.exc import IntegrityError

from selftune.background import ObjectRunner
from selftune.errors import SelftuneError, internal_error
from selftune.evals.service import Evals, item_prefix
from selftune.graders import template
from selftune.graders.judges import context
from selftune.graders.run import Context, Graded, grade, render_messages
from selftune.ids import now
from selftune.schemas.chat import ChatCompletion, ChatCompletionRequest
from selftune.schemas.evals import (
    CompletionsDataSource,
    CriterionResult,
    DataSource,
    EvalApiError,
    EvalRun,
    ItemStatus,
    ModelUsage,
    OutputItem,
    OutputItemResult,
    ResultCounts,
)
from selftune.schemas.graders import Grader
from selftune.services import Services
from selftune.serving.chat import chat
from selftune.statuses import EVAL_RUNS, EvalRunAction, EvalRunStatus

log = logging.getLogger("selftune.evals")

POLL_S = 0.5
SAMPLE_MAX_TOKENS = 512
"""A sample's length when the run's ``sampling_params`` set none."""
_GRADERS: TypeAdapter[Any] = TypeAdapter(Grader)
_SOURCES: TypeAdapter[Any] = TypeAdapter(DataSource)


class EvalRunner(ObjectRunner):
    kind = "eval.run"
    machine = EVAL_RUNS
    log = log

    def __init__(self, services: Services) -> None:
        super().__init__(services)
        self.evals: Evals = services.evals
        self.concurrency = services.settings.eval_concurrency

    async def work(self, owner: str, data: dict[str, Any]) -> None:
        await self._run(owner, EvalRun.model_validate(data))

    def give_up(self, run_id: str, error: Exception) -> None:
        if isinstance(error, SelftuneError):
            code, message = error.code or "run_failed", error.message
        else:
            code, message = "run_failed", internal_error(error, log, f"eval run {run_id} failed").message
        with suppress(SelftuneError):
            run = self.evals.runs.get(None, run_id)
            self.evals.runs.apply(run, EvalRunAction.FAIL, error=EvalApiError(code=code, message=message))

    async def _run(self, owner: str, run: EvalRun) -> None:
        runs = self.evals.runs
        if run.status == EvalRunStatus.QUEUED:
            run = await asyncio.to_thread(runs.apply, run, EvalRunAction.START)
        ev = await asyncio.to_thread(self.evals.evals.get, owner, run.eval_id)
        graders = [_GRADERS.validate_python(c) for c in ev.testing_criteria]
        source = _SOURCES.validate_python(run.data_source)
        rows = await asyncio.to_thread(lambda: list(self.evals.rows(owner, source.source)))
        done = await asyncio.to_thread(self._written, run)
        ctx = context(self.services, owner)
        slots = asyncio.Semaphore(self.concurrency)
        stopped = asyncio.Event()

        async def watch() -> None:  # a cancel (or a delete) stops the items not yet started
            while not stopped.is_set():
                await asyncio.sleep(POLL_S)
                try:
                    current = await asyncio.to_thread(runs.get, None, run.id)
                except SelftuneError:
                    current = None
                if current is None or current.status != EvalRunStatus.IN_PROGRESS:
                    stopped.set()

        async def one(index: int, row: dict[str, Any]) -> None:
            async with slots:
                if stopped.is_set():
                    return
                out = await self._item(owner, run, graders, source, index, row, ctx)
                with suppress(IntegrityError):  # written already, by a runner this one took over from
                    await asyncio.to_thread(self.evals.items.insert, owner, out)

        watcher = asyncio.create_task(watch())
        try:
            await asyncio.gather(*(one(i, row) for i, (_, row) in enumerate(rows) if i not in done))
        finally:
            stopped.set()
            watcher.cancel()
        current = await asyncio.to_thread(runs.get, None, run.id)
        if current.status == EvalRunStatus.IN_PROGRESS:
            await asyncio.to_thread(self._complete, current)

    def _written(self, run: EvalRun) -> set[int]:
        return {item.datasource_item_id for item in self._items(run)}

    def _items(self, run: EvalRun) -> list[OutputItem]:
        out: list[OutputItem] = []
        after = None
        while True:
            prefix = item_prefix(run.id)
            page, more = self.evals.items.children(None, prefix, limit=1000, after=after, newest_first=False)
            out += page
            if not more:
                return out
            after = page[-1].id

    def _complete(self, run: EvalRun) -> None:
        items = self._items(run)
        counts = ResultCounts(total=len(items))
        criteria: dict[str, CriterionResult] = {}
        usage: dict[str, ModelUsage] = {}
        for item in items:
            if item.status == ItemStatus.PASS:
                counts.passed += 1
            elif item.status == ItemStatus.FAIL:
                counts.failed += 1
            else:
                counts.errored += 1
            for r in item.results:
                c = criteria.setdefault(r.name, CriterionResult(testing_criteria=r.name))
                c.passed += r.passed
                c.failed += not r.passed
            sampled = {**item.sample["usage"], "model": item.sample["model"]}
            for used in [sampled] + [(r.sample or {}).get("usage") or {} for r in item.results]:
                if not used.get("model"):
                    continue
                m = usage.setdefault(used["model"], ModelUsage(model_name=used["model"]))
                m.invocation_count += used.get("invocations", 1)
                m.prompt_tokens += used["prompt_tokens"]
                m.completion_tokens += used["completion_tokens"]
                m.total_tokens += used["total_tokens"]
        self.evals.runs.apply(
            run,
            EvalRunAction.COMPLETE,
            result_counts=counts,
            per_testing_criteria_results=list(criteria.values()),
            per_model_usage=list(usage.values()),
        )

    async def _item(
        self,
        owner: str,
        run: EvalRun,
        graders: list[Any],
        source: Any,
        index: int,
        row: dict[str, Any],
        ctx: Context,
    ) -> OutputItem:
        item = row["item"]
        given = row.get("sample") or {}
        sample_ns = template.sample_namespace(str(given.get("output_text", "")))
        sample_ns.update(given)
        wire = _wire_sample(output=[{"role": "assistant", "content": sample_ns["output_text"]}] if given else [])
        sampling_error = None
        if isinstance(source, CompletionsDataSource):
            try:
                sample_ns, wire = await self._sample(owner, source, item)
            except (SelftuneError, template.TemplateError) as e:
                message = e.message if isinstance(e, SelftuneError) else str(e)
                sampling_error = EvalApiError(code=getattr(e, "code", None) or "sample_error", message=message)
                wire = _wire_sample(error=sampling_error.model_dump())
        results: list[Graded] = []
        if sampling_error is None:
            results = list(await asyncio.gather(*(grade(g, sample_ns, item, ctx) for g in graders)))
        out = [
            OutputItemResult(
                name=g.name,
                type=g.type,
                score=r.reward,
                passed=not r.errored and r.reward >= _threshold(g),
                sample={"usage": _judge_usage(r)} if r.usage else None,
            )
            for g, r in zip(graders, results, strict=True)
        ]
        if sampling_error is not None or any(r.errored for r in results):
            status = ItemStatus.ERROR
        else:
            status = ItemStatus.PASS if all(r.passed for r in out) else ItemStatus.FAIL
        return OutputItem(
            id=self.evals.item_id(run.id, index),
            run_id=run.id,
            eval_id=run.eval_id,
            created_at=now(),
            status=status,
            datasource_item_id=index,
            datasource_item=item,
            results=out,
            sample=wire,
        )

    async def _sample(
        self, owner: str, source: CompletionsDataSource, item: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The model's answer to the item's messages: the ``sample`` graders read, and the wire's."""
        ns = {"item": item}
        if source.input_messages is None or source.input_messages.type == "item_reference":
            path = source.input_messages.item_reference if source.input_messages else "item.messages"
            messages = template.lookup(path, ns)
            if isinstance(messages, str):
                messages = [{"role": "user", "content": messages}]
        else:
            messages = render_messages(source.input_messages.template, ns)
        p = source.sampling_params
        max_tokens = (p.max_completion_tokens or p.max_completions_tokens) if p else None
        fields = {
            "temperature": p.temperature if p else None,
            "max_completion_tokens": max_tokens or SAMPLE_MAX_TOKENS,
            "top_p": p.top_p if p else None,
            "seed": p.seed if p else None,
        }
        response_format = p.response_format if p else None
        body = ChatCompletionRequest.model_validate(
            {"model": source.model, "messages": messages, "response_format": response_format, **fields}
        )
        answer = await chat(body, self.services, owner, None)
        assert isinstance(answer, ChatCompletion)
        choice = answer.choices[0]
        text = choice.message.content or ""
        tools = [t.model_dump() for t in choice.message.tool_calls or []]
        json_expected = bool(response_format and response_format.get("type") in ("json_object", "json_schema"))
        sample = template.sample_namespace(text, json_expected=json_expected, tools=tools)
        sample["choices"] = [c.model_dump() for c in answer.choices]
        u = answer.usage
        wire = _wire_sample(
            input=messages,
            output=[{"role": "assistant", "content": text}],
            finish_reason=choice.finish_reason,
            model=answer.model,
            usage={
                "prompt_tokens": u.prompt_tokens if u else 0,
                "completion_tokens": u.completion_tokens if u else 0,
                "total_tokens": u.total_tokens if u else 0,
                "cached_tokens": 0,
            },
            **{k: v for k, v in fields.items() if v is not None},
        )
        return sample, wire


def _wire_sample(**values: Any) -> dict[str, Any]:
    """An output item's ``sample``: every field the spec requires, neutral where nothing was sampled
    (a run over given samples) or where the request left it to the model's default."""
    return {
        "input": [],
        "output": [],
        "finish_reason": "",
        "model": "",
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "cached_tokens": 0},
        "error": {"code": "", "message": ""},
        "temperature": 1.0,
        "max_completion_tokens": SAMPLE_MAX_TOKENS,
        "top_p": 1.0,
        "seed": 0,
        **values,
    }


def _threshold(grader: Any) -> float:
    if getattr(grader, "pass_threshold", None) is not None:
        return float(grader.pass_threshold)
    if grader.type == "score_model":
        low, high = grader.range or [0.0, 1.0]
        return float(low + high) / 2
    return 1.0


def _judge_usage(graded: Graded) -> dict[str, Any]:
    """A grader's judges' tokens, summed (one judge model per grader, in practice)."""
    model = next(iter(graded.usage))
    keys = ("prompt_tokens", "completion_tokens", "total_tokens")
    total = {k: sum(u[k] for u in graded.usage.values()) for k in keys}
    return {"model": model, **total}
