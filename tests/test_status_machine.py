"""The one job status machine (selftune.jobs): its table, its typed error, races, and the dashboard's copy."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from selftune import jobs
from selftune.jobs import TERMINAL, TRANSITIONS, Action, InvalidJobStatus, Status
from selftune.schemas import batches as batch_schemas
from selftune.store import JobRecord, Store
from tests.conftest import REPO, LiveServer


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    yield s
    s.close()


def new_job(store: Store, status: Status = Status.QUEUED) -> JobRecord:
    job = JobRecord(
        id=f"ftjob-{len(store.jobs_in(*Status))}",
        owner="alice",
        created_at=1,
        status=status.value,
        model="tiny",
        base_model="tiny",
        init_adapter=None,
        training_file="file-1",
        validation_file=None,
        hyperparameters={"n_epochs": 1, "batch_size": 1, "learning_rate_multiplier": 1.0},
        method={"type": "supervised"},
        suffix=None,
        seed=0,
        metadata=None,
        integrations=None,
        model_name="ft:tiny:alice::x",
    )
    store.insert_job(job)
    return job


def test_the_table() -> None:
    moves = {(t.source, t.action) for t in TRANSITIONS}
    assert len(moves) == len(TRANSITIONS), "one target per (status, action)"
    assert not [t for t in TRANSITIONS if t.source in TERMINAL], "final statuses have no way out"
    assert all((s, Action.CANCEL) in moves and (s, Action.FAIL) in moves for s in Status if s not in TERMINAL)
    reachable, frontier = {Status.VALIDATING_FILES}, [Status.VALIDATING_FILES]
    while frontier:
        here = frontier.pop()
        for t in TRANSITIONS:
            if t.source == here and t.target not in reachable:
                reachable.add(t.target)
                frontier.append(t.target)
    assert reachable == set(Status)


def test_moves_bookkeeping_and_illegal_moves(store: Store) -> None:
    job = new_job(store)
    running = jobs.apply(store, job, Action.START, {"worker_id": "w1"})
    assert running.status == "running" and running.worker_id == "w1"
    pausing = jobs.pause(store, "alice", job.id)
    assert pausing.status == "pausing" and pausing.worker_id == "w1"  # still the worker's until it stops
    paused = jobs.apply(store, pausing, Action.PAUSED)
    assert paused.status == "paused" and paused.worker_id is None and paused.finished_at is None
    with pytest.raises(InvalidJobStatus) as err:
        jobs.pause(store, "alice", job.id)
    assert err.value.code == "invalid_job_status" and err.value.status_code == 400
    assert "is paused, so it cannot be paused: only queued or running jobs can" in err.value.message
    done = jobs.cancel(store, "alice", job.id)
    assert done.status == "cancelled" and done.finished_at is not None
    with pytest.raises(InvalidJobStatus, match="only unfinished jobs can"):
        jobs.cancel(store, "alice", job.id)
    events, _ = store.list_events(job.id, limit=100)
    assert [e.message for e in reversed(events)] == [
        "Pausing fine-tuning job: saving its state at the end of the current step",
        "Fine-tuning job cancelled",
    ]


def test_a_stale_record_is_decided_again_from_where_the_job_is(store: Store) -> None:
    queued = new_job(store)
    jobs.apply(store, queued, Action.START, {"worker_id": "w1"})  # a worker claims it meanwhile
    # The API read the job while it was queued: pausing it now must give "pausing", not "paused".
    assert jobs.apply(store, queued, Action.PAUSE).status == "pausing"
    # A second worker's claim with its stale record loses, with the typed error.
    with pytest.raises(InvalidJobStatus):
        jobs.apply(store, queued, Action.START, {"worker_id": "w2"})
    assert store.get_job(None, queued.id).worker_id == "w1"


def test_the_dashboard_reads_the_machine_from_the_server(server: LiveServer) -> None:
    body = httpx.get(server.url + "/job-statuses.js", timeout=5).text
    # One `window.NAME = {json};` assignment a line: the job machine and the batch machine.
    assigned = dict(line.removeprefix("window.").rstrip(";").split(" = ", 1) for line in body.splitlines())
    machine = json.loads(assigned["SELFTUNE_JOB_STATUSES"])
    batches = json.loads(assigned["SELFTUNE_BATCH_STATUSES"])
    assert batches == {"active": list(batch_schemas.ACTIVE), "cancellable": list(batch_schemas.CANCELLABLE)}
    assert set(machine["terminal"]) == set(TERMINAL)
    assert machine["actions"]["resume"] == ["paused"] and machine["actions"]["pause"] == ["queued", "running"]
    app_js = (REPO / "selftune" / "server" / "static" / "app.js").read_text()
    for status in ("failed", "cancelled", "pausing", "validating_files"):
        assert f'"{status}"' not in app_js, f"app.js restates the status {status!r}; use STATUSES"
