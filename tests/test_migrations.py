"""Schema migrations: a database made by the previous release upgrades in place, and keeps its data.

The previous release's store is taken from git (``PREVIOUS_RELEASE``), so the old database is
built by the old code itself, exactly as users have it: its tables from ``create_all`` and its rows
through its own ``Store`` methods. Then today's ``Store`` opens it, upgrades it and reads it back.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from sqlalchemy import create_engine, inspect, text

from selftune import migrations
from selftune.blobs import Blobs
from selftune.files import ensure_validated
from selftune.store import Store
from tests.conftest import REPO, chat_lines

PREVIOUS_RELEASE = "cdc799e"
"""The last commit before migrations: its store called create_all and kept no schema version."""
HEAD = "0009"


def old_store_module(tmp_path: Path) -> ModuleType:
    proc = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{PREVIOUS_RELEASE}:selftune/store.py"], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.fail(f"this test needs the git history (commit {PREVIOUS_RELEASE}): {proc.stderr.strip()}")
    path = tmp_path / "store_previous_release.py"
    path.write_text(proc.stdout)
    spec = importlib.util.spec_from_file_location("store_previous_release", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.sqlite'}"
        return
    base = request.getfixturevalue("pg_url")  # a fresh database per run (conftest)
    engine = create_engine(base)
    with engine.begin() as c:  # start empty, and leave it so for the other tests on this database
        c.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    yield base
    with engine.begin() as c:
        c.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()


def test_a_previous_release_database_upgrades_and_reads_back(url: str, tmp_path: Path) -> None:
    old = old_store_module(tmp_path)
    before = old.Store(url)
    blobs = Blobs(tmp_path / "files")
    (tmp_path / "files" / "file-old1").write_text(chat_lines(12))
    before.insert_file(old.FileRecord("file-old1", "alice", "train.jsonl", "fine-tune", 99, 1, None, "processed", None))
    job = old.JobRecord(
        id="ftjob-old1",
        owner="alice",
        created_at=2,
        status="succeeded",
        model="tiny",
        base_model="tiny",
        init_adapter=None,
        training_file="file-old1",
        validation_file=None,
        hyperparameters={"n_epochs": 3, "batch_size": 1, "learning_rate_multiplier": 1.0},
        method={"type": "supervised"},
        suffix="old",
        seed=7,
        metadata={"team": "a"},
        integrations=None,
        model_name="ft:tiny:alice:old:abcd1234",
        fine_tuned_model="ft:tiny:alice:old:abcd1234",
        finished_at=3,
        trained_tokens=360,
    )
    before.insert_job(job, [("info", "Created fine-tuning job: ftjob-old1")])
    before.add_events("ftjob-old1", [("info", "metrics", "Step 1/3: training loss=1.00", {"step": 1})])
    before.put_checkpoint(old.CheckpointRecord("ftckpt_1", "ftjob-old1", 3, 1, {"train_loss": 1.0}, "/c1"), ["/c1"])
    before.insert_model(old.ModelRecord("ft:tiny:alice:old:abcd1234", "alice", 3, "tiny", "/a", "ftjob-old1"))
    before.upsert_base_model(old.BaseModelRecord("tiny", "hf", "/m", None, 1))
    before.close()
    assert migrations.current(create_engine(url)) is None  # the old release kept no version

    store = Store(url)  # upgrades on open
    assert migrations.current(store.engine) == HEAD
    assert {"checksum", "validation"} <= {c["name"] for c in inspect(store.engine).get_columns("files")}
    f = store.get_file("alice", "file-old1")
    assert (f.filename, f.size_bytes, f.checksum, f.validation) == ("train.jsonl", 99, None, None)
    got = store.get_job("alice", "ftjob-old1")
    assert (got.status, got.metadata, got.trained_tokens, got.fine_tuned_model) == (
        "succeeded",
        {"team": "a"},
        360,
        "ft:tiny:alice:old:abcd1234",
    )
    events, _ = store.list_events("ftjob-old1")
    assert [e.message for e in events] == ["Step 1/3: training loss=1.00", "Created fine-tuning job: ftjob-old1"]
    assert [c.step_number for c in store.list_checkpoints("ftjob-old1")[0]] == [1]
    assert [m.id for m in store.list_models("alice")] == ["ft:tiny:alice:old:abcd1234"]
    assert [b.name for b in store.list_base_models()] == ["tiny"]
    # An old file is validated once, on first use, and its verdict kept from then on.
    verdict = ensure_validated(store, blobs, f)
    assert verdict["ok"] and verdict["n_examples"] == 12
    again = store.get_file("alice", "file-old1")
    assert again.validation == verdict and again.checksum == blobs.checksum("file-old1")
    store.close()
    Store(url).close()  # opening an up-to-date database changes nothing


def test_processes_upgrading_at_once_do_not_race(url: str) -> None:
    code = f"from selftune.store import Store; Store({url!r}).close()"
    procs = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True) for _ in range(3)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    assert migrations.current(create_engine(url)) == HEAD
