"""Many machines: two servers and two workers, each with a home of its own, sharing only a real
PostgreSQL database and a real S3 server (SeaweedFS), started by the deployment page's commands.

The store's own guarantees (hash checks, multipart transfers, the bounded cache, base models
materialised from the store or refused) are tested against the same S3 server.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from selftune.cache import Cache
from selftune.errors import StorageUnavailable
from selftune.live import build_tiny_model
from selftune.live_cluster import CREDENTIALS, Layout, LiveCluster, Process, commands
from selftune.storage import S3Storage
from tests.conftest import new_database, run_cli, trivia_jsonl

REPO = Path(__file__).resolve().parent.parent
DONE = ("succeeded", "failed", "cancelled")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCluster]:
    with new_database() as url:  # its own: the workers take every queued job they find
        yield from running_cluster(tmp_path_factory, url)


def running_cluster(tmp_path_factory: pytest.TempPathFactory, url: str, **changes: Any) -> Iterator[LiveCluster]:
    """The page's cluster on free ports, with ``changes`` to its layout (fewer servers, worker options)."""
    layout = dataclasses.replace(Layout.on_free_ports(url, tmp_path_factory.mktemp("cluster")), **changes)
    # A short lease, so that a lost worker's job is taken over in seconds.
    live = LiveCluster(layout, {"SELFTUNE_LEASE_SECONDS": "6"})
    try:
        live.start()
        yield live
    except Exception:
        for w in live.workers:
            print(f"--- {w.name}\n{w.tail()}")
        raise
    finally:
        live.stop()


def _wait(client: openai.OpenAI, job_id: str, timeout: float = 900) -> Any:
    deadline = time.monotonic() + timeout
    job = client.fine_tuning.jobs.retrieve(job_id)
    while job.status not in DONE and time.monotonic() < deadline:
        time.sleep(1)
        job = client.fine_tuning.jobs.retrieve(job_id)
    return job


def _events(client: openai.OpenAI, job_id: str) -> list[Any]:
    return list(client.fine_tuning.jobs.list_events(job_id, limit=1000))[::-1]


def _trained_on(cluster: LiveCluster, job_id: str) -> list[Process]:
    """The workers that trained the job: each one's log names the jobs it trains (``selftune worker``
    logs "training JOB (pid N)"; the job's events keep OpenAI's sequence and name no worker)."""
    return [w for w in cluster.workers if f"training {job_id} " in w.tail(10**7)]


def _s3(cluster: LiveCluster, monkeypatch: pytest.MonkeyPatch) -> S3Storage:
    """A store on the cluster's S3 server, under a prefix of its own (boto3 reads the AWS_* variables)."""
    for k, v in {**CREDENTIALS, "AWS_ENDPOINT_URL": cluster.layout.endpoint}.items():
        monkeypatch.setenv(k, v)
    return S3Storage(f"s3://{cluster.layout.bucket}/test-{time.time_ns()}")


def test_the_deployment_page_shows_the_commands_the_test_runs() -> None:
    page = (REPO / "docs" / "cluster.md").read_text()
    shown = commands(Layout("postgresql+psycopg://127.0.0.1:5432/selftune", Path("/srv/selftune")))
    missing = [c for c in shown if c not in page]
    assert not missing, "docs/cluster.md lacks the commands LiveCluster runs:\n" + "\n".join(missing)


def test_sqlite_refuses_a_shared_store(tmp_path: Path) -> None:
    env = {"SELFTUNE_HOME": str(tmp_path), "SELFTUNE_STORAGE_URL": "s3://bucket/"}
    env.pop("SELFTUNE_DATABASE_URL", None)
    proc = run_cli("worker", env={**env, "SELFTUNE_DATABASE_URL": ""}, check=False)
    assert proc.returncode != 0
    assert "SQLite is a file on one machine" in proc.stdout + proc.stderr


def test_jobs_spread_over_workers_and_every_model_is_served_everywhere(cluster: LiveCluster, tmp_path: Path) -> None:
    one, two = (s.client(timeout=300) for s in cluster.servers)
    listed = two.get("/workers", cast_to=object)["data"]
    assert len(listed) == 2 and {w["device"] for w in listed} == {"cpu"}, listed
    assert all(w["memory_bytes"] > 0 for w in listed)

    # A file uploaded to one server, jobs created on both: each worker trains one at once.
    data = one.files.create(file=trivia_jsonl(tmp_path / "trivia.jsonl", 12).open("rb"), purpose="fine-tune")
    hp = {"n_epochs": 1, "batch_size": 4}
    first = one.fine_tuning.jobs.create(
        model="SmolLM2-135M-Instruct", training_file=data.id, hyperparameters=hp, seed=1
    )
    second = two.fine_tuning.jobs.create(
        model="SmolLM2-135M-Instruct", training_file=data.id, hyperparameters=hp, seed=2
    )
    jobs = [_wait(one, first.id), _wait(two, second.id)]
    assert [j.status for j in jobs] == ["succeeded", "succeeded"], [j.error for j in jobs]
    workers = {w.name for j in jobs for w in _trained_on(cluster, j.id)}
    assert workers == {"worker-1", "worker-2"}, f"both jobs went to one worker: {workers}"

    # Neither server trained anything: both serve both models, fetched from the store, and list them.
    for client in (one, two):
        listed_ids = {m.id for m in client.models.list()}
        for job in jobs:
            assert job.fine_tuned_model in listed_ids
            answer = client.chat.completions.create(
                model=job.fine_tuned_model, messages=[{"role": "user", "content": "Hi"}], max_tokens=8
            )
            assert answer.model == job.fine_tuned_model and answer.choices[0].message.content

    # An export built by whichever server claims it is downloaded from the other one.
    record: Any = one.post("/exports", body={"model": jobs[0].fine_tuned_model, "format": "adapter"}, cast_to=object)
    deadline = time.monotonic() + 300
    while record["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.5)
        record = one.get(f"/exports/{record['id']}", cast_to=object)
    assert record["status"] == "succeeded", record
    for server in cluster.servers:
        tar = httpx.get(f"{server.base_url}/exports/{record['id']}/content", timeout=120)
        assert tar.status_code == 200
        with tarfile.open(fileobj=io.BytesIO(tar.content)) as archive:
            names = archive.getnames()
        assert any(n.endswith("adapter_model.safetensors") for n in names), names

    table = run_cli("workers", "--base-url", cluster.servers[1].base_url).stdout
    assert all(w["id"] in table for w in listed), table


def test_a_lost_worker_s_job_finishes_on_the_other_from_its_checkpoint(cluster: LiveCluster, tmp_path: Path) -> None:
    one, two = (s.client(timeout=300) for s in cluster.servers)
    data = one.files.create(file=trivia_jsonl(tmp_path / "long.jsonl", 12).open("rb"), purpose="fine-tune")
    job = one.fine_tuning.jobs.create(
        model="SmolLM2-135M-Instruct", training_file=data.id, hyperparameters={"n_epochs": 4, "batch_size": 4}, seed=3
    )
    deadline = time.monotonic() + 600
    while not list(one.fine_tuning.jobs.checkpoints.list(job.id)) and time.monotonic() < deadline:
        time.sleep(0.5)
    checkpoint = next(iter(one.fine_tuning.jobs.checkpoints.list(job.id)))
    (lost,) = _trained_on(cluster, job.id)
    lost.kill()  # the machine is gone: no shutdown, no state saved beyond the checkpoint's

    done = _wait(two, job.id)
    assert done.status == "succeeded", done.error
    assert {w.name for w in _trained_on(cluster, job.id)} == {"worker-1", "worker-2"}
    messages = [e.message for e in _events(two, job.id)]
    resumed = [m for m in messages if "continues this job from its checkpoint" in m]
    assert resumed and "fetched from the store" in resumed[0], messages
    assert any(f"Training resumed at step {checkpoint.step_number}/" in m for m in messages), messages
    steps = [e.data["step"] for e in _events(two, job.id) if e.type == "metrics"]
    assert steps[-1] == 12 and checkpoint.step_number in steps
    answer = one.chat.completions.create(
        model=done.fine_tuned_model, messages=[{"role": "user", "content": "Hi"}], max_tokens=8
    )
    assert answer.choices[0].message.content
    cluster.restart_worker(cluster.workers.index(lost))  # for the tests after this one


def test_a_batch_is_answered_once_across_both_servers(cluster: LiveCluster, tmp_path: Path) -> None:
    one, two = (s.client(timeout=300) for s in cluster.servers)
    lines = [
        {
            "custom_id": f"line-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "SmolLM2-135M-Instruct",
                "messages": [{"role": "user", "content": f"Count to {i}"}],
                "max_tokens": 4,
            },
        }
        for i in range(8)
    ]
    path = tmp_path / "cluster-batch.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    upload = one.files.create(file=path.open("rb"), purpose="batch")
    batches = [
        c.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
        for c in (one, two)
    ]
    deadline = time.monotonic() + 600
    finished = []
    for b in batches:
        current = two.batches.retrieve(b.id)
        while current.status not in ("completed", "failed", "expired", "cancelled") and time.monotonic() < deadline:
            time.sleep(0.5)
            current = one.batches.retrieve(b.id)
        finished.append(current)
    for b in finished:
        assert b.status == "completed" and b.request_counts.completed == 8, b
        output = two.files.content(b.output_file_id).text.splitlines()  # registered by either server
        ids = [json.loads(line)["custom_id"] for line in output]
        assert sorted(ids) == sorted(x["custom_id"] for x in lines)  # every line once


def test_a_base_model_added_on_one_machine_is_materialised_on_others_or_refused(
    cluster: LiveCluster, tmp_path: Path
) -> None:
    source = build_tiny_model(tmp_path / "tiny-src")
    env = {**cluster.layout.environment, "SELFTUNE_HOME": str(tmp_path / "registrar")}
    run_cli("models", "add", "tiny-shared", str(source), env=env)
    one, two = (s.client(timeout=300) for s in cluster.servers)
    ask = {"model": "tiny-shared", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}

    # Another model's weights where the registration's were: refused with both hashes, not served.
    shutil.rmtree(source)
    build_tiny_model(source, seed=7)
    with pytest.raises(openai.BadRequestError) as refused:
        two.chat.completions.create(**ask)
    assert refused.value.code == "model_mismatch" and "SHA-256" in refused.value.message

    # No weights there at all: this server fetches the registered ones from the store.
    shutil.rmtree(source)
    answer = one.chat.completions.create(**ask)
    assert answer.model == "tiny-shared" and answer.choices[0].message.content is not None
    copies = list((cluster.servers[0].home / "models").glob("tiny-shared.src/*"))
    assert copies, "the weights were not materialised from the store"


def test_a_base_model_added_from_an_s3_url_is_served_everywhere(
    cluster: LiveCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _s3(cluster, monkeypatch)
    store.put("weights", build_tiny_model(tmp_path / "tiny", seed=3))
    url = f"s3://{store.bucket}/{store.prefix}/weights"
    env = {**cluster.layout.environment, "SELFTUNE_HOME": str(tmp_path / "registrar")}
    run_cli("models", "add", "tiny-from-s3", url, env=env)
    answer = (
        cluster.servers[1]
        .client()
        .chat.completions.create(model="tiny-from-s3", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    )
    assert answer.model == "tiny-from-s3"
    missing = run_cli("models", "add", "nothing", f"s3://{store.bucket}/{store.prefix}/none", env=env, check=False)
    assert missing.returncode != 0 and "no such object or prefix" in missing.stdout + missing.stderr


def test_the_store_checks_hashes_and_streams_large_objects(
    cluster: LiveCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _s3(cluster, monkeypatch)
    big = tmp_path / "big.bin"
    with big.open("wb") as f:
        for i in range(21):  # 21 MB: three multipart parts
            f.write(hashlib.sha256(str(i).encode()).digest() * 32768)
    store.put("files/big", big)
    back = tmp_path / "back.bin"
    assert store.get("files/big", back) and back.read_bytes() == big.read_bytes()
    assert store.get("files/none", tmp_path / "none") is False

    # Bytes changed in the store behind selftune's back (the hash it stored stays): refused, not used.
    original = store.client.head_object(Bucket=store.bucket, Key=store._key("files/big"))["Metadata"]
    store.client.put_object(Bucket=store.bucket, Key=store._key("files/big"), Body=b"other", Metadata=original)
    with pytest.raises(StorageUnavailable, match="SHA-256"):
        store.get("files/big", tmp_path / "tampered")
    assert not (tmp_path / "tampered").exists()


def test_the_cache_keeps_the_recently_used_within_its_bound(
    cluster: LiveCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _s3(cluster, monkeypatch)
    for name in "abc":
        (tmp_path / name).write_bytes(b"x" * 1000)
        store.put(f"files/{name}", tmp_path / name)
    cache = Cache(tmp_path / "cache", store, limit_bytes=2500, in_use_seconds=0)
    a = cache.fetch("files/a")
    time.sleep(0.05)
    b = cache.fetch("files/b")
    time.sleep(0.05)
    assert a is not None and cache.fetch("files/a") == a  # a used again: b is now the oldest
    time.sleep(0.05)
    c = cache.fetch("files/c")
    assert a.exists() and c is not None and c.exists()
    assert b is not None and not b.exists()
