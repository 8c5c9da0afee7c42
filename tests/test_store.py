"""The store on SQLite and on PostgreSQL (127.0.0.1:5432), through the same code path."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from selftune.errors import InvalidRequest, NotFound
from selftune.store import BaseModelRecord, CheckpointRecord, FileRecord, JobRecord, ModelRecord, Store
from tests.conftest import LiveServer, chat_lines, start_server


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


def rec(i: int, owner: str = "alice", purpose: str = "fine-tune") -> FileRecord:
    return FileRecord(
        f"file-{owner}-{i:03d}", owner, f"f{i}.jsonl", purpose, 10 + i, 1_700_000_000, None, "processed", None
    )


def test_files_pagination_and_isolation(store: Store) -> None:
    for i in range(5):
        store.insert_file(rec(i))
    store.insert_file(rec(0, owner="bob"))
    page, more = store.list_files("alice", limit=2)
    assert [r.id for r in page] == ["file-alice-004", "file-alice-003"] and more
    page, more = store.list_files("alice", limit=2, after="file-alice-003")
    assert [r.id for r in page] == ["file-alice-002", "file-alice-001"] and more
    page, more = store.list_files("alice", order="asc", after="file-alice-002")
    assert [r.id for r in page] == ["file-alice-003", "file-alice-004"] and not more
    assert [r.id for r in store.list_files("bob")[0]] == ["file-bob-000"]
    with pytest.raises(NotFound):
        store.get_file("bob", "file-alice-001")
    with pytest.raises(InvalidRequest):
        store.list_files("bob", after="file-alice-001")
    store.delete_file("alice", "file-alice-004")
    with pytest.raises(NotFound):
        store.delete_file("alice", "file-alice-004")
    expired = FileRecord("file-old", "alice", "o.txt", "user_data", 1, 1, 2, "processed", None)
    store.insert_file(expired)  # expired in 1970
    with pytest.raises(NotFound):
        store.get_file("alice", "file-old")
    assert "file-old" not in [r.id for r in store.list_files("alice")[0]]
    # A deleted file still works as a cursor, so pagination survives deletes mid-way.
    assert [r.id for r in store.list_files("alice", after="file-alice-004", limit=1)[0]] == ["file-alice-003"]


def test_models_and_base_models(store: Store) -> None:
    store.insert_model(ModelRecord("ft:tiny:alice::abcd1234", "alice", 1, "tiny", "/a", "ftjob-1"))
    assert store.find_model("bob", "ft:tiny:alice::abcd1234") is None
    assert [m.id for m in store.list_models("alice")] == ["ft:tiny:alice::abcd1234"]
    store.insert_model(ModelRecord("ft:tiny:alice::same0001", "alice", 1, "tiny", "/a", "ftjob-1"))
    # Deleting one of two models on the same adapter keeps the folder; deleting the last frees it.
    assert store.delete_model("alice", "ft:tiny:alice::abcd1234") is None
    assert store.delete_model("alice", "ft:tiny:alice::abcd1234") is None  # already gone
    assert store.delete_model("bob", "ft:tiny:alice::same0001") is None  # not bob's
    assert store.delete_model("alice", "ft:tiny:alice::same0001") == "/a" and not store.list_models("alice")
    store.upsert_base_model(BaseModelRecord("m", "hf", "/x", None, 5))
    store.upsert_base_model(BaseModelRecord("m", "hf", "/y", None, 6))
    assert [(b.name, b.path) for b in store.list_base_models()] == [("m", "/y")]
    assert store.remove_base_model("m") and not store.remove_base_model("m")


def job(i: int, owner: str = "alice", **kw: Any) -> JobRecord:
    base = {
        "id": f"ftjob-{i}",
        "owner": owner,
        "created_at": 1,
        "status": "validating_files",
        "model": "tiny",
        "base_model": "tiny",
        "init_adapter": None,
        "training_file": "file-1",
        "validation_file": None,
        "hyperparameters": {"n_epochs": 3, "batch_size": 1, "learning_rate_multiplier": 1.0},
        "method": {"type": "supervised"},
        "suffix": None,
        "seed": 1,
        "metadata": {"i": str(i % 2)},
        "integrations": None,
        "model_name": f"ft:tiny:{owner}::{i:08d}",
    }
    return JobRecord(**{**base, **kw})


def test_jobs_transitions_pages_and_checkpoints(store: Store) -> None:
    for i in range(5):
        store.insert_job(job(i), [("info", f"Created {i}")])
    store.insert_job(job(9, owner="bob"))
    page, more = store.list_jobs("alice", limit=2)
    assert [j.id for j in page] == ["ftjob-4", "ftjob-3"] and more
    page, more = store.list_jobs("alice", limit=2, after="ftjob-3", metadata={"i": "0"})
    assert [j.id for j in page] == ["ftjob-2", "ftjob-0"] and not more
    with pytest.raises(InvalidRequest):
        store.list_jobs("bob", after="ftjob-3")
    with pytest.raises(NotFound):
        store.get_job("bob", "ftjob-1")
    # Compare-and-set: exactly one of two racing moves wins.
    assert store.transition("ftjob-1", ["validating_files"], {"status": "queued"}, [("info", "queued")])
    assert not store.transition("ftjob-1", ["validating_files"], {"status": "failed"})
    model = ModelRecord("ft:tiny:alice::00000001", "alice", 1, "tiny", "/a", "ftjob-1")
    assert store.transition("ftjob-1", ["queued"], {"status": "succeeded"}, new_models=[model])
    assert store.find_model("alice", model.id) is not None
    store.add_events("ftjob-1", [("info", "metrics", f"Step {s}", {"step": s}) for s in range(1, 4)])
    events, more = store.list_events("ftjob-1", limit=2)
    assert [e.message for e in events] == ["Step 3", "Step 2"] and more
    events, more = store.list_events("ftjob-1", limit=10, after=events[-1].id)
    assert [e.message for e in events] == ["Step 1", "queued", "Created 1"] and not more
    for step in (10, 20, 30, 40):
        kept = [f"/c/{s}" for s in (10, 20, 30, 40) if step - 20 <= s <= step]
        store.put_checkpoint(CheckpointRecord(f"ftckpt_{step}", "ftjob-1", 1, step, {"step": step}, f"/c/{step}"), kept)
    ckpts, _ = store.list_checkpoints("ftjob-1")
    assert [c.step_number for c in ckpts] == [40, 30, 20]


@pytest.mark.postgres
def test_server_runs_on_postgresql(pg_url: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    srv: LiveServer = start_server(tmp_path / "home", tiny_model_dir, SELFTUNE_DATABASE_URL=pg_url)
    try:
        client = srv.client()
        f = client.files.create(file=("t.jsonl", io.BytesIO(chat_lines(10).encode())), purpose="fine-tune")
        assert client.files.retrieve(f.id).bytes == len(chat_lines(10))
        assert "tiny" in [m.id for m in client.models.list()]
        job = client.fine_tuning.jobs.create(
            model="tiny", training_file=f.id, hyperparameters={"n_epochs": 1}, metadata={"db": "pg"}
        )
        while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
            time.sleep(0.3)
        assert job.status == "succeeded", job.error
        assert [j.id for j in client.fine_tuning.jobs.list(metadata={"db": "pg"})] == [job.id]
        assert client.fine_tuning.jobs.checkpoints.list(job.id).data[0].step_number == 10
        assert job.fine_tuned_model in [m.id for m in client.models.list()]
        assert not (tmp_path / "home" / "selftune.db").exists()  # nothing went to SQLite
    finally:
        srv.stop()


def test_sizes_past_two_gib_are_kept(store: Store) -> None:
    """A file over 2 GiB (PostgreSQL's ``integer`` holds 2**31 - 1) is stored and read back whole."""
    big = FileRecord("file-big", "alice", "big.bin", "user_data", 5_000_000_000, 1_700_000_000, None, "processed", None)
    store.insert_file(big)
    assert store.get_file("alice", "file-big").size_bytes == 5_000_000_000
