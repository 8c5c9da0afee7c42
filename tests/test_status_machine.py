"""The one lifecycle pattern (selftune.lifecycle) and every machine of it (selftune.statuses): the tables,
the typed error, races decided by compare-and-set, claims with leases on the database's clock, the
wire schemas typed by the enums, the dashboard's copy, and no status spelled out anywhere else."""

from __future__ import annotations

import ast
import json
import re
import time
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from selftune import jobs
from selftune.claims import LeaseKeeper
from selftune.errors import InvalidStatus
from selftune.lifecycle import Objects
from selftune.methods import Hyperparameters
from selftune.schemas.batches import Batch
from selftune.schemas.exports import Export
from selftune.schemas.fine_tuning import FineTuningJob
from selftune.schemas.uploads import Upload
from selftune.statuses import BATCHES, JOBS, MACHINES, BatchAction, BatchStatus, JobAction, JobStatus
from selftune.store import JobRecord, Store
from tests.conftest import REPO, LiveServer


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    s = Store(url)
    yield s
    if request.param == "postgresql":  # one database for the run: leave it empty, migrations included
        from sqlalchemy import text

        from selftune.store import metadata

        metadata.drop_all(s.engine)
        with s.engine.begin() as c:
            c.execute(text("DROP TABLE IF EXISTS alembic_version"))
    s.close()


def new_job(store: Store, status: JobStatus = JobStatus.QUEUED) -> JobRecord:
    job = JobRecord(
        id=f"ftjob-{len(store.jobs_in(*JobStatus))}",
        owner="alice",
        created_at=1,
        status=status.value,
        model="tiny",
        base_model="tiny",
        init_adapter=None,
        training_file="file-1",
        validation_file=None,
        hyperparameters=Hyperparameters(n_epochs=1, batch_size=1, learning_rate_multiplier=1.0),
        method={"type": "supervised"},
        suffix=None,
        seed=0,
        metadata=None,
        integrations=None,
        model_name="ft:tiny:alice::x",
    )
    store.insert_job(job)
    return job


@pytest.mark.parametrize("name", sorted(MACHINES))
def test_every_table(name: str) -> None:
    m = MACHINES[name]
    moves = {(t.source, t.action) for t in m.transitions}
    assert len(moves) == len(m.transitions), "one target per (status, action)"
    assert not [t for t in m.transitions if t.source in m.terminal], "final statuses have no way out"
    assert m.claimed <= m.unfinished, "nobody works on a finished object"
    start = next(
        iter(sorted(set(m.statuses) - {t.target for t in m.transitions}))
    )  # only the first status has no way in
    reachable, frontier = {start}, [start]
    while frontier:
        here = frontier.pop()
        for t in m.transitions:
            if t.source == here and t.target not in reachable:
                reachable.add(t.target)
                frontier.append(t.target)
    assert reachable == set(m.statuses), f"{name}: every status is reachable from {start}"
    assert all(any(t.source == s for t in m.transitions) for s in m.unfinished), f"{name}: every open status moves"


def test_the_job_table() -> None:
    moves = {(t.source, t.action) for t in JOBS.transitions}
    assert all((s, JobAction.CANCEL) in moves and (s, JobAction.FAIL) in moves for s in JOBS.unfinished)


@pytest.mark.parametrize(
    ("schema", "machine"), [(FineTuningJob, "job"), (Batch, "batch"), (Upload, "upload"), (Export, "export")]
)
def test_the_wire_schemas_are_typed_by_the_enums(schema: Any, machine: str) -> None:
    """The status a client sees is the machine's enum itself, so the two cannot drift apart."""
    assert typing.get_type_hints(schema)["status"] is MACHINES[machine].statuses


def test_moves_bookkeeping_and_illegal_moves(store: Store) -> None:
    job = new_job(store)
    running = jobs.start(store, job, "w1", 60)
    assert running.status == "running" and running.claimed_by == "w1" and running.lease_until is not None
    pausing = jobs.pause(store, "alice", job.id)
    assert pausing.status == "pausing" and pausing.claimed_by == "w1"  # still the worker's until it stops
    paused = jobs.apply(store, pausing, JobAction.PAUSED)
    assert paused.status == "paused" and paused.claimed_by is None and paused.lease_until is None
    assert paused.finished_at is None
    with pytest.raises(InvalidStatus) as err:
        jobs.pause(store, "alice", job.id)
    assert err.value.code == "invalid_job_status" and err.value.status_code == 400
    assert "is paused, so it cannot be paused: only queued or running jobs can" in err.value.message
    done = jobs.cancel(store, "alice", job.id)
    assert done.status == "cancelled" and done.finished_at is not None
    with pytest.raises(InvalidStatus, match="only unfinished jobs can"):
        jobs.cancel(store, "alice", job.id)
    events, _ = store.list_events(job.id, limit=100)
    assert [e.message for e in reversed(events)] == [
        "Pausing fine-tuning job: saving its state at the end of the current step",
        "Fine-tuning job cancelled",
    ]


def test_a_stale_record_is_decided_again_from_where_the_job_is(store: Store) -> None:
    queued = new_job(store)
    jobs.start(store, queued, "w1", 60)  # a worker claims it meanwhile
    # The API read the job while it was queued: pausing it now must give "pausing", not "paused".
    assert jobs.apply(store, queued, JobAction.PAUSE).status == "pausing"
    # A second worker's claim with its stale record loses, with the typed error.
    with pytest.raises(InvalidStatus):
        jobs.start(store, queued, "w2", 60)
    assert store.get_job(None, queued.id).claimed_by == "w1"


def test_leases_are_renewed_and_lapse_on_the_databases_clock(store: Store) -> None:
    job = new_job(store)
    jobs.start(store, job, "w1", 1.0)
    assert store.claims.lapsed_jobs(JOBS.claimed) == []
    keeper = LeaseKeeper(store.claims, "jobs", "w1", 1.0).start()
    keeper.hold(job.id)
    time.sleep(1.6)  # past the first lease: only the renewals keep it
    assert store.claims.lapsed_jobs(JOBS.claimed) == [] and not keeper.lost(job.id)
    keeper.stop()
    time.sleep(1.3)
    assert [j.id for j in store.claims.lapsed_jobs(JOBS.claimed)] == [job.id]
    # Another holder cannot renew what it does not hold; the one that did hold it learns it lost it.
    assert store.claims.renew("jobs", "w2", [job.id], 60) == set()
    jobs.apply(store, store.get_job(None, job.id), JobAction.REQUEUE)  # what a recovering worker does
    again = LeaseKeeper(store.claims, "jobs", "w1", 60)
    again.hold(job.id)
    again.renew_now()
    assert again.lost(job.id)


def test_objects_are_claimed_once_and_moved_by_their_machine(store: Store) -> None:
    batches = Objects(store.objects, "batch", Batch, BATCHES, "batch", stamp=True)
    for i in range(3):
        batches.insert(
            "alice",
            Batch(
                id=f"batch_{i}",
                endpoint="/v1/chat/completions",
                input_file_id="file-1",
                completion_window="24h",
                status=BatchStatus.VALIDATING,
                created_at=1,
            ),
        )
    first = store.claims.claim_object("batch", BATCHES.claimed, "server-a", 60)
    second = store.claims.claim_object("batch", BATCHES.claimed, "server-b", 60)
    assert first is not None and second is not None and (first.id, second.id) == ("batch_0", "batch_1")
    assert first.claimed_by == "server-a" and second.claimed_by == "server-b"
    moved = batches.apply(batches.get(None, "batch_0"), BatchAction.VALIDATED)
    assert moved.status == BatchStatus.IN_PROGRESS and moved.in_progress_at is not None
    with pytest.raises(InvalidStatus) as err:
        batches.apply(moved, BatchAction.COMPLETE)
    assert err.value.code == "invalid_batch_status" and "only finalizing batches can" in err.value.message
    failed = batches.apply(moved, BatchAction.FAIL)
    assert failed.status == BatchStatus.FAILED and failed.failed_at is not None
    assert store.objects.get("batch", None, "batch_0", "batch").claimed_by is None  # a final move lets go
    # A stale copy's save loses to the move: a cancel is never overwritten by progress.
    assert not batches.save(moved)
    # A claim that lapses is taken over by the next server that asks.
    store.claims.renew("objects", "server-b", ["batch_1"], -1)
    taken = store.claims.claim_object("batch", BATCHES.claimed, "server-c", 60)
    assert taken is not None and (taken.id, taken.claimed_by) == ("batch_1", "server-c")


def test_the_dashboard_reads_every_machine_from_the_server(server: LiveServer) -> None:
    body = httpx.get(server.url + "/statuses.js", timeout=5).text
    name, _, value = body.strip().removesuffix(";").partition(" = ")
    assert name == "window.SELFTUNE_MACHINES"
    served = json.loads(value)
    assert served == {name: m.describe() for name, m in MACHINES.items()}
    assert served["job"]["actions"]["resume"] == ["paused"] and served["job"]["actions"]["pause"] == [
        "queued",
        "running",
    ]
    assert served["batch"]["actions"]["cancel"] == ["in_progress", "validating"]
    assert served["export"]["targets"]["succeed"] == "succeeded"
    app_js = (REPO / "selftune" / "server" / "static" / "app.js").read_text()
    for status in {s.value for m in MACHINES.values() for s in m.statuses}:
        assert f'"{status}"' not in app_js, f"app.js restates the status {status!r}; use MACHINES"


# Quoted words that are statuses elsewhere but mean something else here (a key, an event type, a label).
NOT_STATUSES = {
    ("selftune/train/protocol.py", "paused"): "the recipe's Paused event type",
    ("selftune/files.py", "processed"): "a File's status, which has no machine",
}


def test_no_status_is_spelled_out_outside_its_definition() -> None:
    statuses = {s.value for m in MACHINES.values() for s in m.statuses}
    statuses |= {"in_progress", "completed", "incomplete", "failed"}  # a response's and its items'
    found = []
    for path in sorted((REPO / "selftune").rglob("*.py")):
        rel = str(path.relative_to(REPO))
        if rel in ("selftune/statuses.py",) or "/migrations/versions/" in rel:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in statuses and (rel, node.value) not in NOT_STATUSES:
                found.append(f"{rel}:{node.lineno}: {node.value!r}")
    assert not found, "statuses spelled out instead of their enum:\n" + "\n".join(found)
    assert re.search(r"class JobStatus\(StrEnum\)", (REPO / "selftune" / "statuses.py").read_text())
