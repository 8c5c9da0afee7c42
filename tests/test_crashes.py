"""A real server SIGKILLed at each step that publishes something (``selftune.faults`` names them): a
part of an upload, the file a completion makes, a job's end, an export's end, a batch's end. After a
restart nothing is lost (the client's retry, or the server's own, finishes the work), nothing is
half-written (no file without its row, no row without its bytes, no temporary left) and nothing is
answered twice (one file per completion, one model and one set of result files per job, one output
file per batch). The batch killed midway is in test_batches.py."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import LiveServer, chat_lines, start_server


@pytest.fixture(scope="module")
def crashable(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[LiveServer]:
    """One home for every case (each restarts the server on it); sweeps every half second."""
    srv = start_server(tmp_path_factory.mktemp("home-crashes"), tiny_model_dir, SELFTUNE_SWEEP_SECONDS="0.5")
    yield srv
    srv.stop()


def restart(srv: LiveServer, crash_at: str | None = None) -> openai.OpenAI:
    srv.stop()
    srv.env.pop("SELFTUNE_CRASH_AT", None)
    if crash_at:
        srv.env["SELFTUNE_CRASH_AT"] = crash_at
    srv.start(keep_port=True)
    return srv.client(timeout=30)


def killed(srv: LiveServer, timeout: float = 120) -> None:
    """The server SIGKILLed itself at its crash point (and not for any other reason)."""
    assert srv.proc is not None
    assert srv.proc.wait(timeout=timeout) == -signal.SIGKILL, srv.log[-3000:]


def until(check: Any, timeout: float = 60, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what or check}")


def files_named(client: openai.OpenAI, name: str) -> list[Any]:
    return [f for f in client.files.list(limit=10_000).data if f.filename == name]


def age(paths: list[Path]) -> None:
    """Make what a crash left look two hours old, past the temporary window (the sweeper's cutoff)."""
    old = time.time() - 7200
    for p in paths:
        os.utime(p, (old, old))


def leftovers(srv: LiveServer) -> list[Path]:
    tmp = srv.home / "files" / ".tmp"
    return sorted(tmp.iterdir()) if tmp.is_dir() else []


def unregistered(srv: LiveServer, client: openai.OpenAI) -> list[str]:
    """Bytes under files/ with no live file (every owner is the one local owner here)."""
    live = {f.id for f in client.files.list(limit=10_000).data}
    return sorted(p.name for p in (srv.home / "files").iterdir() if p.is_file() and p.name not in live)


# --- uploads ------------------------------------------------------------------------------------------


def _parts(name: str) -> tuple[bytes, list[bytes]]:
    data = chat_lines(30, offset=hash(name) % 1000).encode()
    return data, [data[: len(data) // 2], data[len(data) // 2 :]]


def _create_upload(client: openai.OpenAI, name: str, data: bytes) -> Any:
    return client.uploads.create(bytes=len(data), filename=name, mime_type="application/jsonl", purpose="fine-tune")


def test_an_upload_killed_as_a_part_lands_takes_the_part_again(crashable: LiveServer) -> None:
    client = restart(crashable, "upload.part")
    data, (first, second) = _parts("part.jsonl")
    upload = _create_upload(client, "part.jsonl", data)
    with pytest.raises(openai.APIConnectionError):
        client.uploads.parts.create(upload_id=upload.id, data=first)
    killed(crashable)
    assert leftovers(crashable), "the part's temporary file is what the crash leaves"

    client = restart(crashable)
    assert client.uploads.parts.create(upload_id=upload.id, data=first)  # the client sends it again
    p2 = client.uploads.parts.create(upload_id=upload.id, data=second)
    p1 = next(p.name for p in (crashable.home / "files" / ".uploads" / upload.id).iterdir() if p.name != p2.id)
    done = client.uploads.complete(upload_id=upload.id, part_ids=[p1, p2.id], md5=hashlib.md5(data).hexdigest())
    assert done.status == "completed" and done.file is not None
    assert client.files.content(done.file.id).read() == data
    age(leftovers(crashable))
    until(lambda: not leftovers(crashable), what="the sweeper to remove the temporary file")


@pytest.mark.parametrize("point", ["file.committed", "upload.registered"])
def test_an_upload_killed_as_it_completes_is_completed_once_on_retry(crashable: LiveServer, point: str) -> None:
    client = restart(crashable)
    name = f"{point}.jsonl"
    data, halves = _parts(name)
    upload = _create_upload(client, name, data)
    ids = [client.uploads.parts.create(upload_id=upload.id, data=h).id for h in halves]
    client = restart(crashable, point)
    with pytest.raises(openai.APIConnectionError):
        client.uploads.complete(upload_id=upload.id, part_ids=ids)
    killed(crashable)

    client = restart(crashable)
    done = client.uploads.complete(upload_id=upload.id, part_ids=ids)  # the SDK user's retry
    assert done.status == "completed" and done.file is not None
    (only,) = files_named(client, name)
    assert only.id == done.file.id and client.files.content(only.id).read() == data
    assert not (crashable.home / "files" / ".uploads" / upload.id).exists()
    assert not unregistered(crashable, client)


def test_bytes_a_crash_left_without_a_file_are_swept(crashable: LiveServer) -> None:
    client = restart(crashable, "file.committed")
    with pytest.raises(openai.APIConnectionError):
        client.files.create(file=("lost.jsonl", chat_lines(5).encode()), purpose="fine-tune")
    killed(crashable)
    client = restart(crashable)
    assert not files_named(client, "lost.jsonl")  # never answered, so never registered
    orphans = unregistered(crashable, client)
    assert len(orphans) == 1
    client.files.create(file=("lost.jsonl", chat_lines(5).encode()), purpose="fine-tune")  # the retry
    age([crashable.home / "files" / orphans[0]])
    until(lambda: not unregistered(crashable, client), what="the sweeper to remove the bytes without a file")
    assert len(files_named(client, "lost.jsonl")) == 1


# --- a job's end ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("point", ["job.finished", "job.results", "job.evaluated"])
def test_a_job_killed_as_it_ends_ends_once(crashable: LiveServer, point: str) -> None:
    client = restart(crashable, point)
    metrics_before = len(files_named(client, "step_metrics.csv"))
    train = client.files.create(file=(f"{point}.jsonl", chat_lines(10).encode()), purpose="fine-tune")
    valid = client.files.create(file=(f"{point}-valid.jsonl", chat_lines(3, offset=50).encode()), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="tiny",
        training_file=train.id,
        validation_file=valid.id,
        hyperparameters={"n_epochs": 2},
        suffix=point.replace(".", "-"),
    )
    killed(crashable, timeout=300)

    client = restart(crashable)
    job = until(
        lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed", "cancelled") and j,
        timeout=300,
        what=f"{job.id} to end",
    )
    assert job.status == "succeeded", job.error
    models = [m.id for m in client.models.list().data if m.id == job.fine_tuned_model]
    assert models == [job.fine_tuned_model]
    events = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=1000).data]
    assert sum(m.startswith("New fine-tuned model created") for m in events) == 1
    assert any("stopped unexpectedly" in m for m in events)
    own = [f for f in client.files.list(limit=10_000).data if f.id in job.result_files]
    assert len(own) == len(job.result_files) == len(set(job.result_files)) >= 1
    assert len(files_named(client, "step_metrics.csv")) == metrics_before + 1
    r = client.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": "q"}])
    assert r.model == job.fine_tuned_model
    assert not unregistered(crashable, client)
    # Its evaluation is one eval of the Evals API, however often the job was finished.
    evals = [e for e in client.evals.list(limit=100) if (e.metadata or {}).get("fine_tuning_job_id") == job.id]
    assert len(evals) == 1 and sum(m.startswith("Evaluation: eval ") for m in events) == 1


# --- an export's end, a batch's end ------------------------------------------------------------------


def test_an_export_killed_as_it_is_built_is_built_again(crashable: LiveServer) -> None:
    client = restart(crashable, "export.built")
    record: Any = client.post("/exports", body={"model": "tiny", "format": "merged"}, cast_to=object)
    killed(crashable, timeout=300)
    client = restart(crashable)
    record = until(
        lambda: (r := client.get(f"/exports/{record['id']}", cast_to=object))["status"] != "running" and r,
        timeout=300,
        what="the export",
    )
    assert record["status"] == "succeeded", record["error"]
    listed = [e for e in client.get("/exports", cast_to=object)["data"] if e["id"] == record["id"]]  # type: ignore[index]
    assert len(listed) == 1
    r = httpx.get(f"{crashable.base_url}/exports/{record['id']}/content", timeout=60)
    assert r.status_code == 200 and int(r.headers["content-length"]) == len(r.content)
    assert not list((crashable.home / "exports" / record["id"]).glob(".*"))  # nothing half-built beside it


def test_a_batch_killed_as_it_ends_has_one_output_file(crashable: LiveServer) -> None:
    client = restart(crashable, "batch.output")
    lines = "".join(
        f'{{"custom_id": "r{i}", "method": "POST", "url": "/v1/chat/completions", "body": '
        f'{{"model": "tiny", "max_tokens": 3, "messages": [{{"role": "user", "content": "hi {i}"}}]}}}}\n'
        for i in range(6)
    )
    src = client.files.create(file=("crash-batch.jsonl", lines.encode()), purpose="batch")
    batch = client.batches.create(input_file_id=src.id, endpoint="/v1/chat/completions", completion_window="24h")
    killed(crashable)
    client = restart(crashable)
    batch = until(
        lambda: (
            (b := client.batches.retrieve(batch.id)).status in ("completed", "failed", "expired", "cancelled") and b
        ),
        timeout=120,
        what=f"{batch.id} to end",
    )
    assert batch.status == "completed" and batch.output_file_id, batch.errors
    (output,) = files_named(client, f"{batch.id}_output.jsonl")
    assert output.id == batch.output_file_id
    answered = [line for line in client.files.content(output.id).text.splitlines() if line]
    assert sorted(json.loads(line)["custom_id"] for line in answered) == [f"r{i}" for i in range(6)]
    assert batch.request_counts is not None and batch.request_counts.completed == 6
    assert not unregistered(crashable, client)
