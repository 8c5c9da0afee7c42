"""Evals and their runs: creation with every check, reads, updates, deletes, and the items a run
grades. Runs and output items follow ``statuses.EVAL_RUNS`` through ``lifecycle.Objects``; an output
item's id holds its run's, so a run's items are listed by prefix and a run taken over skips those
already written."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import jsonschema

from selftune import safejson
from selftune.errors import InvalidRequest
from selftune.graders import template
from selftune.graders.check import check, check_messages, judges, served
from selftune.ids import now, random_id
from selftune.lifecycle import Objects
from selftune.schemas.evals import (
    CompletionsDataSource,
    CreateEvalRequest,
    CreateEvalRunRequest,
    Eval,
    EvalRun,
    FileContentSource,
    OutputItem,
    TemplateInput,
)
from selftune.statuses import EVAL_RUNS, EvalRunStatus

if TYPE_CHECKING:
    from selftune.blobs import Blobs
    from selftune.catalog import Catalog
    from selftune.store import Store

SAMPLE_SCHEMA = {
    "type": "object",
    "properties": {
        "model": {"type": "string"},
        "choices": {"type": "array"},
        "output_text": {"type": "string"},
        "output_json": {},
        "output_tools": {"type": "array"},
    },
}
MAX_ITEMS = 50_000


class Evals:
    def __init__(self, store: Store, blobs: Blobs, catalog: Catalog) -> None:
        self.store, self.blobs, self.catalog = store, blobs, catalog
        objects = store.objects
        self.evals: Objects[Eval] = Objects(objects, "eval", Eval, None, "eval")
        self.runs: Objects[EvalRun] = Objects(objects, "eval.run", EvalRun, EVAL_RUNS, "eval run")
        self.items: Objects[OutputItem] = Objects(objects, "eval.output_item", OutputItem, None, "output item")

    # --- evals ------------------------------------------------------------------------------------

    def create(self, owner: str, body: CreateEvalRequest, eval_id: str | None = None) -> Eval:
        """``eval_id``: an id chosen by the caller (a job's evaluation: one per job), else a random one."""
        config = body.data_source_config
        try:
            jsonschema.Draft202012Validator.check_schema(config.item_schema)
        except jsonschema.SchemaError as e:
            raise InvalidRequest(
                f"data_source_config.item_schema is not a JSON schema: {e.message}",
                param="data_source_config.item_schema",
            ) from None
        fields = set(config.item_schema.get("properties", {}))

        exists = judges(self.catalog, owner)
        for i, criterion in enumerate(body.testing_criteria):
            check(criterion, exists, f"testing_criteria.{i}")
            _check_item_fields(criterion.model_dump(exclude_none=True), fields, f"testing_criteria.{i}")
        schema: dict[str, Any] = {"type": "object", "properties": {"item": config.item_schema}, "required": ["item"]}
        if config.include_sample_schema:
            schema["properties"]["sample"] = SAMPLE_SCHEMA
            schema["required"].append("sample")
        ev = Eval(
            id=eval_id or random_id("eval_"),
            name=body.name or "eval",
            data_source_config={"type": "custom", "schema": schema},
            testing_criteria=[c.model_dump(exclude_none=True) for c in body.testing_criteria],
            created_at=now(),
            metadata=body.metadata,
        )
        return self.evals.insert(owner, ev)

    # --- runs -------------------------------------------------------------------------------------

    def create_run(self, owner: str, eval_id: str, body: CreateEvalRunRequest) -> EvalRun:
        ev = self.evals.get(owner, eval_id)
        source = body.data_source
        model = ""
        if isinstance(source, CompletionsDataSource):
            if not served(self.catalog, owner)(source.model):
                raise InvalidRequest(
                    f"The model {source.model!r} does not exist here (see GET /v1/models)", param="data_source.model"
                )
            model = source.model
            if isinstance(source.input_messages, TemplateInput):
                where = "data_source.input_messages.template"
                check_messages(source.input_messages.template, where, "invalid_request")
        item_schema = ev.data_source_config["schema"]["properties"]["item"]
        validator = jsonschema.Draft202012Validator(item_schema)
        count = 0
        for where, row in self.rows(owner, source.source):
            count += 1
            if count > MAX_ITEMS:
                raise InvalidRequest(f"more than {MAX_ITEMS:,} items in one run", param="data_source.source")
            problem = next(iter(validator.iter_errors(row.get("item"))), None)
            if problem is not None:
                path = ".".join(str(p) for p in problem.path)
                raise InvalidRequest(
                    f"{where}: the item fails the eval's item_schema{f' at {path}' if path else ''}: {problem.message}",
                    param="data_source.source",
                )
        if count == 0:
            raise InvalidRequest("the data source has no items", param="data_source.source")
        run_id = f"{run_prefix(ev.id)}{time.time_ns():016x}"  # in the order they were made
        run = EvalRun(
            id=run_id,
            eval_id=ev.id,
            status=EvalRunStatus.QUEUED,
            model=model,
            name=body.name or f"run-{run_id[-6:]}",
            created_at=now(),
            report_url=f"/#/evals/{ev.id}/runs/{run_id}",  # the dashboard's page of the run
            data_source=body.data_source.model_dump(exclude_none=True),
            metadata=body.metadata,
        )
        return self.runs.insert(owner, run)

    def rows(self, owner: str, source: Any) -> Iterator[tuple[str, dict[str, Any]]]:
        """(where, ``{"item": ..., "sample"?: ...}``) for each item of a run's source, in order."""
        if isinstance(source, FileContentSource):
            for i, row in enumerate(source.content):
                yield f"data_source.source.content.{i}", row.model_dump(exclude_none=True)
            return
        rec = self.store.get_file(owner, source.id)
        if rec.purpose != "evals":
            raise InvalidRequest(
                f"File {rec.id} has purpose {rec.purpose!r}; upload eval data with purpose='evals'",
                param="data_source.source.id",
            )
        with self.blobs.path(rec.id).open("rb") as f:
            for line, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                where = f"{rec.filename}:{line}"
                obj = safejson.loads(raw, where)
                if not isinstance(obj, dict):
                    raise InvalidRequest(f"{where}: each line must be a JSON object", param="data_source.source")
                yield where, obj if "item" in obj else {"item": obj}

    def item_id(self, run_id: str, index: int) -> str:
        return f"{item_prefix(run_id)}{index:06d}"


def run_prefix(eval_id: str) -> str:
    """What the ids of an eval's runs start with."""
    return f"evalrun_{eval_id.removeprefix('eval_')}_"


def item_prefix(run_id: str) -> str:
    """What the ids of a run's output items start with."""
    return f"outputitem_{run_id.removeprefix('evalrun_')}_"


def _check_item_fields(value: Any, fields: set[str], where: str) -> None:
    """Every ``{{item.<key>}}`` a criterion names is a property of the item schema (when it lists any)."""
    if isinstance(value, str):
        for path in template.references(value):
            head, _, rest = path.partition(".")
            key = rest.split(".")[0]
            if head == "item" and fields and key not in fields:
                raise InvalidRequest(
                    f"{where}: {{{{{path}}}}} names {key!r}, which the item_schema does not have "
                    f"(its properties: {', '.join(sorted(fields))})",
                    param=where,
                )
    elif isinstance(value, dict):
        for k, v in value.items():
            if k != "source":  # a python grader's code is not a template
                _check_item_fields(v, fields, where)
    elif isinstance(value, list):
        for v in value:
            _check_item_fields(v, fields, where)
