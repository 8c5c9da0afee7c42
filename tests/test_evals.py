"""The Evals API through the SDK (``client.evals``), on the real server.

An eval with a custom item schema and testing criteria; a run over given samples with exact counts
per item and per criterion, its output items paged and filtered; a completions run that samples the
tiny model on items from a file (``purpose="evals"``); cancel and delete; and bad input: an item
failing the schema, a template naming a field the schema lacks, an unknown model, a malformed
grader, each a 400 naming the field.
"""

from __future__ import annotations

import io
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Conformance, LiveServer, start_server

SCHEMA = {
    "type": "object",
    "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
    "required": ["question", "answer"],
}
EXACT = {
    "type": "string_check",
    "name": "exact",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "operation": "eq",
}
CLOSE = {
    "type": "text_similarity",
    "name": "close",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "evaluation_metric": "fuzzy_match",
    "pass_threshold": 0.8,
}


def create_eval(client: openai.OpenAI, **changes: Any) -> Any:
    spec: dict[str, Any] = {
        "name": "capitals",
        "metadata": {"team": "qa"},
        "data_source_config": {"type": "custom", "item_schema": SCHEMA, "include_sample_schema": True},
        "testing_criteria": [EXACT, CLOSE],
        **changes,
    }
    return client.evals.create(**spec)


def wait(client: openai.OpenAI, eval_id: str, run_id: str, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        run = client.evals.runs.retrieve(run_id, eval_id=eval_id)
        if run.status in ("completed", "failed", "canceled") or time.monotonic() > deadline:
            return run
        time.sleep(0.2)


ROWS = [  # item, given sample: exact and close / close only / neither / exact and close
    ({"question": "France?", "answer": "Paris"}, "Paris"),
    ({"question": "Italy?", "answer": "Rome"}, "Rome."),
    ({"question": "Spain?", "answer": "Madrid"}, "Lisbon"),
    ({"question": "Japan?", "answer": "Tokyo"}, "Tokyo"),
]


def test_an_eval_over_given_samples_counts_exactly(server: LiveServer, conformance: Conformance) -> None:
    client = server.client()
    ev = create_eval(client)
    raw = httpx.get(f"{server.base_url}/evals/{ev.id}").json()
    conformance.check("Eval", raw)
    assert raw["data_source_config"]["schema"]["properties"]["item"] == SCHEMA
    assert [c.name for c in ev.testing_criteria] == ["exact", "close"]
    assert client.evals.update(ev.id, name="capitals 2").name == "capitals 2"
    assert client.evals.retrieve(ev.id).name == "capitals 2" and client.evals.retrieve(ev.id).metadata == {"team": "qa"}
    assert ev.id in [e.id for e in client.evals.list(limit=100)]

    content = [{"item": item, "sample": {"output_text": text}} for item, text in ROWS]
    run = client.evals.runs.create(
        ev.id, name="given", data_source={"type": "jsonl", "source": {"type": "file_content", "content": content}}
    )
    assert run.status in ("queued", "in_progress") and run.report_url
    done = wait(client, ev.id, run.id)
    assert done.status == "completed", done.error
    assert done.result_counts.model_dump() == {"total": 4, "errored": 0, "failed": 2, "passed": 2}
    per = {r.testing_criteria: (r.passed, r.failed) for r in done.per_testing_criteria_results}
    assert per == {"exact": (2, 2), "close": (3, 1)}
    conformance.check("EvalRun", httpx.get(f"{server.base_url}/evals/{ev.id}/runs/{run.id}").json())

    items = list(client.evals.runs.output_items.list(run.id, eval_id=ev.id, limit=3))  # two pages
    assert [i.datasource_item_id for i in items] == [0, 1, 2, 3]
    assert [i.status for i in items] == ["pass", "fail", "fail", "pass"]
    assert items[1].results[1].score == pytest.approx(0.888888, abs=1e-4) and items[1].results[1].passed
    failed = client.evals.runs.output_items.list(run.id, eval_id=ev.id, status="fail")
    assert [i.datasource_item["answer"] for i in failed] == ["Rome", "Madrid"]
    one = client.evals.runs.output_items.retrieve(items[2].id, eval_id=ev.id, run_id=run.id)
    assert one.datasource_item == ROWS[2][0] and one.results[0].passed is False
    page = httpx.get(f"{server.base_url}/evals/{ev.id}/runs/{run.id}/output_items?limit=2").json()
    conformance.check("EvalRunOutputItemList", page)
    assert page["has_more"] is True
    conformance.check("EvalRunList", httpx.get(f"{server.base_url}/evals/{ev.id}/runs").json())

    assert client.evals.runs.delete(run.id, eval_id=ev.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.evals.runs.retrieve(run.id, eval_id=ev.id)
    assert client.evals.delete(ev.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.evals.retrieve(ev.id)


def test_a_completions_run_samples_a_served_model(server: LiveServer) -> None:
    client = server.client()
    ev = create_eval(client)
    lines = "".join(json.dumps({"item": item}) + "\n" for item, _ in ROWS)
    data = client.files.create(file=("capitals.jsonl", io.BytesIO(lines.encode())), purpose="evals")
    run = client.evals.runs.create(
        ev.id,
        data_source={
            "type": "completions",
            "model": "tiny",
            "source": {"type": "file_id", "id": data.id},
            "input_messages": {
                "type": "template",
                "template": [
                    {"role": "system", "content": "Answer with a city."},
                    {"role": "user", "content": "{{item.question}}"},
                ],
            },
            "sampling_params": {"temperature": 0, "max_completion_tokens": 6, "seed": 1},
        },
    )
    done = wait(client, ev.id, run.id)
    assert done.status == "completed", done.error
    assert done.result_counts.total == 4 and done.result_counts.errored == 0
    assert done.model == "tiny"
    (usage,) = done.per_model_usage
    assert usage.model_name == "tiny" and usage.invocation_count == 4 and usage.completion_tokens > 0
    item = next(iter(client.evals.runs.output_items.list(run.id, eval_id=ev.id)))
    assert item.sample.input[1].content == "France?" and item.sample.model == "tiny"  # type: ignore[union-attr]
    assert item.sample.max_completion_tokens == 6 and item.sample.output[0].role == "assistant"


def test_a_run_can_be_canceled(server: LiveServer) -> None:
    client = server.client()
    slow = {
        "type": "python",
        "name": "slow",
        "source": "def grade(sample, item):\n    import time\n    time.sleep(1)\n    return 1.0",
    }
    ev = create_eval(client, testing_criteria=[slow])
    content = [{"item": item, "sample": {"output_text": "x"}} for item, _ in ROWS * 10]
    run = client.evals.runs.create(
        ev.id, data_source={"type": "jsonl", "source": {"type": "file_content", "content": content}}
    )
    deadline = time.monotonic() + 60
    while client.evals.runs.retrieve(run.id, eval_id=ev.id).status == "queued" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.evals.runs.cancel(run.id, eval_id=ev.id).status == "canceled"
    time.sleep(2.5)  # the items in flight finish; no more are started
    graded = len(list(client.evals.runs.output_items.list(run.id, eval_id=ev.id, limit=100)))
    time.sleep(2)
    assert graded == len(list(client.evals.runs.output_items.list(run.id, eval_id=ev.id, limit=100))) < 40
    with pytest.raises(openai.BadRequestError):
        client.evals.runs.create(
            ev.id, data_source={"type": "jsonl", "source": {"type": "file_content", "content": []}}
        )


def test_bad_evals_and_runs_are_400s_naming_the_field(server: LiveServer) -> None:
    client = server.client()

    def refused(call: Any, param: str) -> None:
        with pytest.raises(openai.BadRequestError) as e:
            call()
        assert e.value.body["param"] == param, e.value.body  # type: ignore[index]

    refused(
        lambda: create_eval(client, testing_criteria=[{**EXACT, "reference": "{{item.solution}}"}]),
        "testing_criteria.0",
    )
    refused(
        lambda: create_eval(client, testing_criteria=[{**EXACT, "operation": "is"}]),
        "testing_criteria.0.string_check.operation",
    )
    refused(
        lambda: create_eval(client, data_source_config={"type": "custom", "item_schema": {"type": "thing"}}),
        "data_source_config.item_schema",
    )
    ev = create_eval(client)
    bad = [{"item": {"question": "France?"}}]
    refused(
        lambda: client.evals.runs.create(
            ev.id, data_source={"type": "jsonl", "source": {"type": "file_content", "content": bad}}
        ),
        "data_source.source",
    )
    source = {"type": "file_content", "content": [{"item": ROWS[0][0]}]}
    refused(
        lambda: client.evals.runs.create(ev.id, data_source={"type": "completions", "model": "nope", "source": source}),
        "data_source.model",
    )


def test_a_run_whose_server_is_killed_resumes_without_grading_items_twice(tmp_path: Path, tiny_model_dir: Path) -> None:
    calls = tmp_path / "calls.log"  # outside the selftune home: the sandboxed grader may write there
    source = (
        "def grade(sample, item):\n"
        "    import time\n"
        f"    with open({str(calls)!r}, 'a') as f:\n"
        "        f.write(item['question'] + '\\n')\n"
        "    time.sleep(0.2)\n"
        "    return float(sample['output_text'] == item['answer'])\n"
    )
    rows = [({"question": f"q{i}", "answer": str(i % 3)}, "0") for i in range(30)]
    srv = start_server(tmp_path / "home", tiny_model_dir, SELFTUNE_EVAL_CONCURRENCY="2")
    try:
        client = srv.client()
        ev = create_eval(client, testing_criteria=[{"type": "python", "name": "zero", "source": source}])
        content = [{"item": item, "sample": {"output_text": text}} for item, text in rows]
        run = client.evals.runs.create(
            ev.id, data_source={"type": "jsonl", "source": {"type": "file_content", "content": content}}
        )
        written = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and written < 8:
            written = len(client_items(srv, ev.id, run.id))
            time.sleep(0.1)
        assert srv.proc is not None
        os.kill(srv.proc.pid, signal.SIGKILL)
        srv.proc.wait()
        assert 8 <= written < 30  # killed half way

        srv.start()
        client = srv.client()
        done = wait(client, ev.id, run.id)
        assert done.status == "completed", done.error
        assert done.result_counts.model_dump() == {"total": 30, "errored": 0, "failed": 20, "passed": 10}
        items = client_items(srv, ev.id, run.id)
        assert sorted(i.datasource_item_id for i in items) == list(range(30))
        graded = calls.read_text().splitlines()
        # Every item graded once, but for those in flight when the server died (at most 2 at once: SELFTUNE_EVAL_CONCURRENCY).
        assert set(graded) == {f"q{i}" for i in range(30)} and len(graded) <= 30 + 2
    finally:
        srv.stop()


def client_items(srv: LiveServer, eval_id: str, run_id: str) -> list[Any]:
    return list(srv.client().evals.runs.output_items.list(run_id, eval_id=eval_id, limit=100))
