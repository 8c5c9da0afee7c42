"""A hostile (or careless) client against a real server: giant and malformed bodies, parser bombs, a
rebinding web page, amplification, poisoned batches, names that would become paths, and the limits
that hold them. Each case prints the server's peak memory and a chat request's latency meanwhile."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from bench.hostile import raw_request
from selftune.live import watching
from tests.conftest import ALICE, BOB, LiveServer, chat_lines, run_cli, start_server

BOMBS = {
    "nested 20,000 deep": ("[" * 20_000 + "]" * 20_000, "nested more than 64 levels"),
    "an integer of 5,000 digits": ('{"model": "tiny", "n": ' + "7" * 5000 + "}", "a number of 5000 characters"),
    "a float of 300 digits": ('{"model": "tiny", "temperature": 0.' + "1" * 300 + "}", "a number of 302 characters"),
    "not UTF-8": (b'{"model": "\xff\xfe"}', "not UTF-8"),
}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Any:
    """A server with small bounds, to reach them with small requests."""
    srv = start_server(
        tmp_path_factory.mktemp("home-hostile"),
        tiny_model_dir,
        SELFTUNE_MAX_GENERATIONS="3",
        SELFTUNE_MAX_CHOICES_PER_REQUEST="8",
        SELFTUNE_MAX_REQUEST_BYTES=str(1 << 20),
        SELFTUNE_BATCH_CONCURRENCY="1",
    )
    yield srv
    srv.stop()


# --- at the edge -------------------------------------------------------------------------------------


def test_a_300_mb_body_without_a_key_is_refused_before_it_is_read(keyed_server: LiveServer) -> None:
    head = "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    with watching(keyed_server, chat=False) as w:
        status, declared = raw_request(keyed_server.port, head + f"Content-Length: {300 << 20}\r\n\r\n", 300 << 20)
        status_chunked, streamed = raw_request(
            keyed_server.port, head + "Transfer-Encoding: chunked\r\n\r\n", 300 << 20, chunked=True
        )
    print(f"declared: {status} in {declared:.3f}s; chunked: {status_chunked} in {streamed:.3f}s")
    assert status.split()[1] in ("401", "413") and status_chunked.split()[1] == "401"
    assert w.grew_mb < 50, w.summary()


def test_a_body_over_the_limit_is_a_413_while_it_streams(small: LiveServer) -> None:
    head = "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    with watching(small, chat=False) as w:
        status, _ = raw_request(small.port, head + "Transfer-Encoding: chunked\r\n\r\n", 300 << 20, chunked=True)
    assert status.split()[1] == "413", status
    assert w.grew_mb < 50, w.summary()
    r = httpx.post(
        f"{small.base_url}/chat/completions", content=b"x" * (2 << 20), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large", r.text
    assert "SELFTUNE_MAX_REQUEST_BYTES" in r.json()["error"]["message"]


@pytest.mark.parametrize("bomb", sorted(BOMBS))
@pytest.mark.parametrize(
    "path",
    ["/chat/completions", "/completions", "/responses", "/fine_tuning/jobs", "/fine_tuning/jobs/estimate", "/batches"],
)
def test_parser_bombs_are_400s_that_say_what_is_wrong(small: LiveServer, path: str, bomb: str) -> None:
    body, says = BOMBS[bomb]
    data = body.encode() if isinstance(body, str) else body
    r = httpx.post(small.base_url + path, content=data, headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_json" and says in error["message"], error


def test_parser_bombs_in_a_training_file_are_errors_of_their_lines(small: LiveServer) -> None:
    """The validator reads uploads on the server: a bomb in a line is that line's error, not a 500."""
    lines = chat_lines(10).encode() + b'{"messages": [], "n": ' + b"7" * 5000 + b"}\n" + b"[" * 20_000 + b"]" * 20_000
    with pytest.raises(openai.BadRequestError) as e:
        small.client().files.create(file=("bombs.jsonl", lines), purpose="fine-tune")
    assert "bombs.jsonl:11: error: refused for a number of 5000 characters" in e.value.message
    assert "bombs.jsonl:12: error: nested more than 64 levels deep" in e.value.message


def test_local_mode_answers_only_requests_addressed_to_loopback(small: LiveServer) -> None:
    """DNS rebinding: a web page whose domain now points to 127.0.0.1 sends its own domain as Host."""
    for host in ("evil.example", "evil.example:8000", "192.168.1.10"):
        r = httpx.get(small.base_url + "/models", headers={"Host": host})
        assert r.status_code == 421 and r.json()["error"]["code"] == "misdirected_request", (host, r.text)
    for host in ("localhost", f"127.0.0.1:{small.port}", f"[::1]:{small.port}", "app.localhost"):
        assert httpx.get(small.base_url + "/models", headers={"Host": host}).status_code == 200, host


def test_health_tells_only_a_key_holder_what_is_loaded(keyed_server: LiveServer) -> None:
    assert httpx.get(keyed_server.url + "/health").json().keys() == {"status", "version"}
    full = httpx.get(keyed_server.url + "/health", headers={"Authorization": f"Bearer {ALICE}"}).json()
    assert "loaded_models" in full and "choices_in_flight" in full


# --- admission -----------------------------------------------------------------------------------------


def test_amplification_is_bounded_and_a_flood_is_told_to_come_back(small: LiveServer) -> None:
    client = small.client()
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt=["hello"] * 3, n=3, max_tokens=2)
    assert e.value.code == "too_many_choices" and "at most 8" in e.value.message
    # Three generations fit at once; a fourth is a 429 with Retry-After, at once, not a queue. The three
    # are held open by a schema that asks for a long string, so none can end early.
    schema = {"type": "object", "properties": {"a": {"type": "string", "minLength": 400}}, "required": ["a"]}
    long = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 1000,
        "response_format": {"type": "json_schema", "json_schema": {"name": "long", "schema": schema}},
    }

    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as http:
            first = [asyncio.create_task(http.post(f"{small.base_url}/chat/completions", json=long)) for _ in range(3)]
            while httpx.get(small.url + "/health").json()["choices_in_flight"] < 3:
                await asyncio.sleep(0.01)
            t0 = time.monotonic()
            late = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
            refused = await http.post(f"{small.base_url}/chat/completions", json=late)
            print(f"refused in {time.monotonic() - t0:.3f}s")
            return [refused, *await asyncio.gather(*first)]

    with watching(small, chat=False):  # the chat probe would take one of the three places
        refused, *answered = asyncio.run(flood())
    assert refused.status_code == 429 and refused.headers["retry-after"] == "2", refused.text
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert [r.status_code for r in answered] == [200, 200, 200]
    assert client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2)


def test_token_ids_outside_the_vocabulary_are_400s(small: LiveServer) -> None:
    client = small.client()
    for prompt in ([[-1]], [[5, 10**7]]):
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model="tiny", prompt=prompt, max_tokens=2)  # type: ignore[arg-type]
        assert e.value.code == "invalid_token_id" and "vocabulary" in e.value.message


@pytest.mark.parametrize("sampling", [{"top_p": 5e-324, "temperature": 1.0}, {"temperature": 1e-300}])
def test_extreme_sampling_values_are_answered(small: LiveServer, sampling: dict[str, float]) -> None:
    """Found by the fuzzing suite: a top_p that is 0 in float32 left no token to sample from (a 500),
    and so does a temperature that makes the logits overflow."""
    r = small.client().completions.create(model="tiny", prompt="hi", max_tokens=3, **sampling)  # type: ignore[arg-type]
    assert r.choices[0].text is not None and r.usage is not None and r.usage.completion_tokens >= 1


def test_exports_are_bounded_per_owner(tmp_path: Path, tiny_model_dir: Path) -> None:
    srv = start_server(
        tmp_path / "home",
        tiny_model_dir,
        SELFTUNE_API_KEYS=f"{ALICE}:alice,{BOB}:bob",
        SELFTUNE_MAX_EXPORTS_PER_OWNER="1",
    )
    try:
        alice, bob = srv.client(ALICE), srv.client(BOB)
        first: Any = alice.post("/exports", body={"model": "tiny", "format": "merged"}, cast_to=object)
        with pytest.raises(openai.RateLimitError) as e:
            alice.post("/exports", body={"model": "tiny", "format": "gguf"}, cast_to=object)
        assert "SELFTUNE_MAX_EXPORTS_PER_OWNER" in str(e.value)
        other: Any = bob.post("/exports", body={"model": "tiny", "format": "merged"}, cast_to=object)  # another owner
        for owner, record in ((alice, first), (bob, other)):
            while record["status"] == "running":
                time.sleep(0.3)
                record = owner.get(f"/exports/{record['id']}", cast_to=object)
            assert record["status"] == "succeeded", record
        done: Any = alice.post("/exports", body={"model": "tiny", "format": "gguf"}, cast_to=object)
        assert done["status"] == "running"  # the first one finished: room again
    finally:
        srv.stop()


# --- background work that must survive anything ------------------------------------------------------


def batch_line(custom_id: str) -> dict[str, Any]:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def test_poisoned_batch_lines_fail_their_batch_by_line_and_the_next_batch_runs(small: LiveServer) -> None:
    client = small.client()
    good = batch_line("ok")
    poison = b"".join(
        [
            json.dumps(good).encode() + b"\n",
            b'{"custom_id": "big", "method": "POST", "url": "/v1/chat/completions", "body": {"n": '
            + b"9" * 5000
            + b"}}\n",
            b"[" * 20_000 + b"]" * 20_000 + b"\n",
            b'{"custom_id": "\xff"}\n',
        ]
    )
    bad_file = client.files.create(file=("poison.jsonl", io.BytesIO(poison)), purpose="batch")
    clean_file = client.files.create(
        file=("clean.jsonl", io.BytesIO(json.dumps(good).encode() + b"\n")), purpose="batch"
    )
    with watching(small) as w:
        bad = client.batches.create(input_file_id=bad_file.id, endpoint="/v1/chat/completions", completion_window="24h")
        clean = client.batches.create(
            input_file_id=clean_file.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        deadline = time.monotonic() + 60
        while (b := client.batches.retrieve(clean.id)).status not in (
            "completed",
            "failed",
        ) and time.monotonic() < deadline:
            time.sleep(0.2)
    assert b.status == "completed", b
    failed = client.batches.retrieve(bad.id)
    assert failed.status == "failed" and failed.errors is not None, failed
    lines = {(e.line, e.code) for e in failed.errors.data or []}
    assert lines == {(2, "invalid_json"), (3, "invalid_json"), (4, "invalid_json")}, lines
    print(w.summary())


def test_a_batch_that_cannot_be_read_fails_with_its_reason_and_the_next_one_runs(small: LiveServer) -> None:
    client = small.client()
    line = batch_line("a")
    broken = client.files.create(file=("broken.jsonl", io.BytesIO(json.dumps(line).encode())), purpose="batch")
    fine = client.files.create(file=("fine.jsonl", io.BytesIO(json.dumps(line).encode())), purpose="batch")
    blob = small.home / "files" / broken.id  # a disk fault: the bytes of the file are no longer a file
    blob.unlink()
    blob.mkdir()
    first = client.batches.create(input_file_id=broken.id, endpoint="/v1/chat/completions", completion_window="24h")
    second = client.batches.create(input_file_id=fine.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 60
    while (b := client.batches.retrieve(second.id)).status != "completed" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert b.status == "completed"
    failed = client.batches.retrieve(first.id)
    assert failed.status == "failed" and failed.errors and failed.errors.data
    (error,) = failed.errors.data
    assert error.code == "batch_failed" and "error id err_" in (error.message or ""), error
    assert "IsADirectoryError" not in (error.message or "") and str(small.home) not in (error.message or "")
    assert "err_" in small.log and "IsADirectoryError" in small.log  # the log has it whole


def test_a_worker_that_cannot_start_a_job_fails_it(tmp_path: Path, tiny_model_dir: Path) -> None:
    """After its claim, a worker that hits anything unexpected fails the job with the reason; before,
    the job stayed ``running`` with no process until a restart."""
    home = tmp_path / "home"
    srv = start_server(home, tiny_model_dir, SELFTUNE_WORKER="false")
    worker = None
    try:
        client = srv.client()
        f = client.files.create(file=("t.jsonl", io.BytesIO(chat_lines(10).encode())), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(model="tiny", training_file=f.id, hyperparameters={"n_epochs": 1})
        (home / "jobs").mkdir(exist_ok=True)
        (home / "jobs" / job.id).write_text("a file where the job's folder must go")
        worker = subprocess.Popen(
            [sys.executable, "-m", "selftune", "worker"],
            env={**_env(home)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in (
            "failed",
            "succeeded",
        ) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert job.status == "failed" and job.error is not None and job.error.code == "training_failed", job
        assert "error id err_" in (job.error.message or "") and worker.poll() is None  # the worker goes on
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=30)
        srv.stop()


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "SELFTUNE_HOME": str(home), "SELFTUNE_ENGINE": "torch"}


# --- uploads, names ------------------------------------------------------------------------------------


def test_parts_beyond_the_declared_bytes_are_refused(small: LiveServer) -> None:
    client = small.client()
    upload = client.uploads.create(bytes=10, filename="a.txt", mime_type="text/plain", purpose="user_data")
    with pytest.raises(openai.BadRequestError) as e:
        client.uploads.parts.create(upload.id, data=b"x" * 11)
    assert e.value.param == "data" and "10 bytes" in e.value.message
    client.uploads.parts.create(upload.id, data=b"x" * 6)
    with pytest.raises(openai.BadRequestError):
        client.uploads.parts.create(upload.id, data=b"x" * 5)
    part = client.uploads.parts.create(upload.id, data=b"x" * 4)
    assert (
        client.uploads.complete(
            upload.id,
            part_ids=[p.name for p in (small.home / "files" / ".uploads" / upload.id).iterdir() if p.name != part.id]
            + [part.id],
        ).status
        == "completed"
    )


@pytest.mark.parametrize("name", ["..", "../x", "a/../b", ".hidden", "/etc"])
def test_a_model_name_never_becomes_a_path_outside_its_folder(
    small: LiveServer, tiny_model_dir: Path, name: str
) -> None:
    proc = run_cli("models", "add", name, str(tiny_model_dir), env={"SELFTUNE_HOME": str(small.home)}, check=False)
    assert proc.returncode != 0 and "invalid model name" in proc.stderr, proc.stderr
    assert (small.home / "selftune.db").is_file() and (small.home / "models").is_dir()  # nothing was removed


def test_models_toml_names_are_checked(tmp_path: Path, tiny_model_dir: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "models.toml").write_text(f'[models.".."]\npath = "{tiny_model_dir}"\n')
    proc = run_cli("models", "list", "--local", env={"SELFTUNE_HOME": str(home)}, check=False)
    assert proc.returncode != 0 and "invalid model name '..'" in proc.stderr and "models.toml" in proc.stderr


def test_wandb_runs_of_a_server_with_keys_go_only_to_projects_the_operator_lists(keyed_server: LiveServer) -> None:
    alice = keyed_server.client(ALICE)
    f = alice.files.create(file=("t.jsonl", io.BytesIO(chat_lines(10).encode())), purpose="fine-tune")
    with pytest.raises(openai.PermissionDeniedError) as e:
        alice.fine_tuning.jobs.create(
            model="tiny", training_file=f.id, integrations=[{"type": "wandb", "wandb": {"project": "someone-elses"}}]
        )
    assert e.value.code == "integration_not_allowed" and "SELFTUNE_WANDB_PROJECTS" in e.value.message
