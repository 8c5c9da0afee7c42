"""``/v1/evals``: evals, their runs and the runs' output items (OpenAI's Evals API).

Thin handlers over ``selftune.evals.service``; runs are answered in the background by
``selftune.evals.runner``. A run or an output item is reached through its eval, which must be the
caller's.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from selftune.errors import NotFound
from selftune.evals.service import item_prefix, run_prefix
from selftune.schemas.evals import (
    CreateEvalRequest,
    CreateEvalRunRequest,
    DeletedEval,
    DeletedEvalRun,
    Eval,
    EvalList,
    EvalRun,
    EvalRunList,
    OutputItem,
    OutputItemList,
    UpdateEvalRequest,
)
from selftune.server.deps import OwnerDep, ServicesDep
from selftune.server.edge import Route
from selftune.statuses import EvalRunAction, EvalRunStatus

router = APIRouter(tags=["evals"], route_class=Route)
Limit = Annotated[int, Query(ge=1, le=100)]
Order = Literal["asc", "desc"]


@router.post("/evals")
def create_eval(body: CreateEvalRequest, services: ServicesDep, owner: OwnerDep) -> Eval:
    return services.evals.create(owner, body)


@router.get("/evals")
def list_evals(
    services: ServicesDep, owner: OwnerDep, limit: Limit = 20, after: str | None = None, order: Order = "asc"
) -> EvalList:
    data, more = services.evals.evals.page(owner, limit=limit, after=after, oldest_first=order == "asc")
    return EvalList(data=data, first_id=_first(data), last_id=_last(data), has_more=more)


@router.get("/evals/{eval_id}")
def retrieve_eval(eval_id: str, services: ServicesDep, owner: OwnerDep) -> Eval:
    return services.evals.evals.get(owner, eval_id)


@router.post("/evals/{eval_id}")
def update_eval(eval_id: str, body: UpdateEvalRequest, services: ServicesDep, owner: OwnerDep) -> Eval:
    evals = services.evals.evals
    ev = evals.get(owner, eval_id)
    changes = {k: v for k, v in (("name", body.name), ("metadata", body.metadata)) if v is not None}
    updated = ev.model_copy(update=changes)
    evals.save(updated)
    return updated


@router.delete("/evals/{eval_id}")
def delete_eval(eval_id: str, services: ServicesDep, owner: OwnerDep) -> DeletedEval:
    services.evals.evals.delete(owner, eval_id)
    return DeletedEval(eval_id=eval_id)


@router.post("/evals/{eval_id}/runs")
def create_run(eval_id: str, body: CreateEvalRunRequest, services: ServicesDep, owner: OwnerDep) -> EvalRun:
    return services.evals.create_run(owner, eval_id, body)


@router.get("/evals/{eval_id}/runs")
def list_runs(
    eval_id: str,
    services: ServicesDep,
    owner: OwnerDep,
    limit: Limit = 20,
    after: str | None = None,
    order: Order = "asc",
    status: EvalRunStatus | None = None,
) -> EvalRunList:
    services.evals.evals.get(owner, eval_id)
    data, more = services.evals.runs.children(
        owner, run_prefix(eval_id), limit=limit, after=after, newest_first=order == "desc", status=status
    )
    return EvalRunList(data=data, first_id=_first(data), last_id=_last(data), has_more=more)


@router.get("/evals/{eval_id}/runs/{run_id}")
def retrieve_run(eval_id: str, run_id: str, services: ServicesDep, owner: OwnerDep) -> EvalRun:
    return _run(services, owner, eval_id, run_id)


@router.post("/evals/{eval_id}/runs/{run_id}")
@router.post("/evals/{eval_id}/runs/{run_id}/cancel")  # where openai-python 2.x sends it
def cancel_run(eval_id: str, run_id: str, services: ServicesDep, owner: OwnerDep) -> EvalRun:
    """Cancels a queued or running run (the items in flight finish); a canceled run is returned as it is."""
    run = _run(services, owner, eval_id, run_id)
    if run.status == EvalRunStatus.CANCELED:
        return run
    return services.evals.runs.apply(run, EvalRunAction.CANCEL)


@router.delete("/evals/{eval_id}/runs/{run_id}")
def delete_run(eval_id: str, run_id: str, services: ServicesDep, owner: OwnerDep) -> DeletedEvalRun:
    run = _run(services, owner, eval_id, run_id)
    if run.status not in (EvalRunStatus.COMPLETED, EvalRunStatus.CANCELED, EvalRunStatus.FAILED):
        run = services.evals.runs.apply(run, EvalRunAction.CANCEL)
    services.evals.runs.delete(owner, run_id)
    return DeletedEvalRun(run_id=run_id)


@router.get("/evals/{eval_id}/runs/{run_id}/output_items")
def list_output_items(
    eval_id: str,
    run_id: str,
    services: ServicesDep,
    owner: OwnerDep,
    limit: Limit = 20,
    after: str | None = None,
    order: Order = "asc",
    status: Literal["pass", "fail", "error"] | None = None,
) -> OutputItemList:
    _run(services, owner, eval_id, run_id)
    data, more = services.evals.items.children(
        owner, item_prefix(run_id), limit=limit, after=after, newest_first=order == "desc", status=status
    )
    return OutputItemList(data=data, first_id=_first(data), last_id=_last(data), has_more=more)


@router.get("/evals/{eval_id}/runs/{run_id}/output_items/{output_item_id}")
def retrieve_output_item(
    eval_id: str, run_id: str, output_item_id: str, services: ServicesDep, owner: OwnerDep
) -> OutputItem:
    _run(services, owner, eval_id, run_id)
    if not output_item_id.startswith(item_prefix(run_id)):
        raise NotFound(f"No such output item: {output_item_id}", param="output_item_id", code="output_item_not_found")
    return services.evals.items.get(owner, output_item_id)


def _run(services: ServicesDep, owner: str, eval_id: str, run_id: str) -> EvalRun:
    services.evals.evals.get(owner, eval_id)
    if not run_id.startswith(run_prefix(eval_id)):
        raise NotFound(f"No such eval run: {run_id}", param="run_id", code="eval.run_not_found")
    return services.evals.runs.get(owner, run_id)


def _first(data: list[Eval] | list[EvalRun] | list[OutputItem]) -> str | None:
    return data[0].id if data else None


def _last(data: list[Eval] | list[EvalRun] | list[OutputItem]) -> str | None:
    return data[-1].id if data else None
