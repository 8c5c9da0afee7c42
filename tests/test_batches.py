"""The Batch API through the real SDK: chat, completions and responses lines answered in the
background as the routes answer them, OpenAI's output and error line format, validation, cancel,
a server killed mid-batch that resumes without answering a line twice, and a batch that expires."""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Conformance, LiveServer, start_server

FINAL = ("completed", "failed", "cancelled", "expired")


def batch_file(client: openai.OpenAI, lines: list[dict[str, Any]]) -> str:
    data = "".join(json.dumps(x) + "\n" for x in lines).encode()
    return client.files.create(file=("requests.jsonl", io.BytesIO(data)), purpose="batch").id


def chat_line(i: int, **body: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": f"question {i}"}]
    return {
        "custom_id": f"q{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "tiny", "messages": messages, "max_tokens": 5, "temperature": 0, **body},
    }


def wait(client: openai.OpenAI, batch_id: str, until: tuple[str, ...] = FINAL, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in until:
            return batch
        time.sleep(0.2)
    raise AssertionError(f"batch {batch_id} still {batch.status}")


def results(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    return [json.loads(x) for x in client.files.content(file_id).text.splitlines()] if file_id else []


def test_a_chat_batch_answers_like_the_route(
    client: openai.OpenAI, server: LiveServer, conformance: Conformance
) -> None:
    lines = [chat_line(i) for i in range(5)] + [chat_line(9, temperature=7)]
    batch = client.batches.create(
        input_file_id=batch_file(client, lines),
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"run": "nightly"},
    )
    assert batch.status == "validating" and batch.object == "batch" and batch.metadata == {"run": "nightly"}
    done = wait(client, batch.id)
    assert done.status == "completed", done.errors
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (6, 5, 1)
    assert done.completed_at and done.in_progress_at and done.finalizing_at
    conformance.check("Batch", httpx.get(f"{server.base_url}/batches/{batch.id}").json())
    out = results(client, done.output_file_id)
    assert sorted(r["custom_id"] for r in out) == [f"q{i}" for i in range(5)]
    # usage sums the answered lines' tokens; model names the model that answered them.
    prompt = sum(r["response"]["body"]["usage"]["prompt_tokens"] for r in out)
    answer = sum(r["response"]["body"]["usage"]["completion_tokens"] for r in out)
    assert done.usage is not None and (done.usage.input_tokens, done.usage.output_tokens) == (prompt, answer) != (0, 0)
    assert done.usage.total_tokens == prompt + answer and done.model == out[0]["response"]["body"]["model"]
    for r in out:
        assert r["response"]["status_code"] == 200 and r["error"] is None and r["id"].startswith("batch_req_")
        i = int(r["custom_id"][1:])
        direct = client.chat.completions.create(**chat_line(i)["body"])
        assert r["response"]["body"]["choices"][0]["message"]["content"] == direct.choices[0].message.content
    (bad,) = results(client, done.error_file_id)
    assert bad["custom_id"] == "q9" and bad["response"]["status_code"] == 400
    assert bad["response"]["body"]["error"]["param"] == "temperature"
    assert client.files.retrieve(done.output_file_id).purpose == "batch_output"
    listed = client.batches.list(limit=50)
    assert batch.id in [b.id for b in listed.data]
    conformance.check("ListBatchesResponse", httpx.get(f"{server.base_url}/batches").json())
    with pytest.raises(openai.BadRequestError):
        client.batches.cancel(batch.id)  # already completed


@pytest.mark.parametrize(
    ("endpoint", "body", "pick"),
    [
        ("/v1/completions", {"prompt": "hello world"}, lambda b: b["choices"][0]["text"]),
        ("/v1/responses", {"input": "hello world"}, lambda b: b["output"][0]["content"][0]["text"]),
    ],
)
def test_completions_and_responses_batch_too(
    client: openai.OpenAI, endpoint: str, body: dict[str, Any], pick: Any
) -> None:
    kwargs = {"model": "tiny", "temperature": 0, **body}
    kwargs["max_output_tokens" if endpoint == "/v1/responses" else "max_tokens"] = 4
    line = {"custom_id": "only", "method": "POST", "url": endpoint, "body": kwargs}
    done = wait(
        client,
        client.batches.create(input_file_id=batch_file(client, [line]), endpoint=endpoint, completion_window="24h").id,
    )  # type: ignore[arg-type]
    (r,) = results(client, done.output_file_id)
    assert done.usage is not None and done.usage.output_tokens == 4, done.usage  # each endpoint's own usage names
    direct = httpx.post(f"{client.base_url}{endpoint.removeprefix('/v1/')}", json=kwargs).json()
    assert pick(r["response"]["body"]) == pick(direct)


def test_a_bad_input_file_fails_the_batch_naming_lines(client: openai.OpenAI) -> None:
    lines = [chat_line(0), {**chat_line(1), "url": "/v1/completions"}, chat_line(0)]
    file_id = batch_file(client, lines)
    failed = wait(
        client,
        client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h").id,
    )
    assert failed.status == "failed" and failed.failed_at
    assert [(e.code, e.line) for e in failed.errors.data] == [("mismatched_url", 2)]
    dup = batch_file(client, [chat_line(0), chat_line(0)])
    failed = wait(
        client, client.batches.create(input_file_id=dup, endpoint="/v1/chat/completions", completion_window="24h").id
    )
    assert [(e.code, e.line) for e in failed.errors.data] == [("duplicate_custom_id", 2)]
    with pytest.raises(openai.BadRequestError) as e:
        client.batches.create(input_file_id=dup, endpoint="/v1/embeddings", completion_window="24h")  # type: ignore[arg-type]
    assert e.value.param == "endpoint"
    train = client.files.create(
        file=("t.jsonl", io.BytesIO(b'{"prompt": "a", "completion": "b"}\n')), purpose="fine-tune"
    )
    with pytest.raises(openai.BadRequestError) as e:
        client.batches.create(input_file_id=train.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert e.value.param == "input_file_id"


def test_cancel_keeps_what_was_answered(client: openai.OpenAI) -> None:
    lines = [chat_line(i, max_tokens=200) for i in range(40)]
    batch = client.batches.create(
        input_file_id=batch_file(client, lines), endpoint="/v1/chat/completions", completion_window="24h"
    )
    wait(client, batch.id, until=("in_progress",))
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    done = wait(client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at
    answered = results(client, done.output_file_id)
    assert done.request_counts.completed == len(answered) < 40


def start_then_kill(srv: LiveServer, lines: int, *, delete_input: bool = False) -> str:
    """A chat batch of ``lines`` lines, the server SIGKILLed once 3 are answered (the input file deleted
    first with ``delete_input``), then started again on the same address and home; the batch id."""
    client = srv.client()
    file_id = batch_file(client, [chat_line(i, max_tokens=60) for i in range(lines)])
    batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 60
    while client.batches.retrieve(batch.id).request_counts.completed < 3:  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    if delete_input:
        client.files.delete(file_id)
    assert srv.proc is not None
    srv.proc.kill()
    srv.proc.wait()
    srv.start(keep_port=True)
    return batch.id


def test_a_killed_server_resumes_its_batch_without_answering_a_line_twice(tmp_path: Path, tiny_model_dir: Path) -> None:
    srv = start_server(tmp_path / "home", tiny_model_dir, SELFTUNE_BATCH_CONCURRENCY="1")
    try:
        done = wait(srv.client(), start_then_kill(srv, 30))
        assert done.status == "completed" and done.request_counts.completed == 30, done
        ids = [r["custom_id"] for r in results(srv.client(), done.output_file_id)]
        assert sorted(ids) == sorted(f"q{i}" for i in range(30)) and len(ids) == len(set(ids))
    finally:
        srv.stop()


def test_an_input_file_deleted_before_the_batch_resumed_fails_it_keeping_the_answers(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    srv = start_server(tmp_path / "home", tiny_model_dir, SELFTUNE_BATCH_CONCURRENCY="1")
    try:
        done = wait(srv.client(), start_then_kill(srv, 20, delete_input=True))
        assert done.status == "failed" and done.failed_at and done.errors is not None, done
        (error,) = done.errors.data or []
        assert error.code == "invalid_file" and error.param == "input_file_id" and "was deleted" in str(error.message)
        kept = [r["custom_id"] for r in results(srv.client(), done.output_file_id)]
        assert 3 <= len(kept) < 20 and done.request_counts is not None and done.request_counts.completed == len(kept)
    finally:
        srv.stop()


def test_a_batch_past_its_window_expires_naming_every_line_it_did_not_answer(
    tmp_path: Path, tiny_model_dir: Path, conformance: Conformance
) -> None:
    # A 3-second window instead of 24 h: 400 lines of 60 tokens one at a time cannot all fit in it.
    srv = start_server(
        tmp_path / "home", tiny_model_dir, SELFTUNE_BATCH_CONCURRENCY="1", SELFTUNE_BATCH_WINDOW_SECONDS="3"
    )
    try:
        client = srv.client()
        lines = [chat_line(i, max_tokens=60) for i in range(400)]
        batch = client.batches.create(
            input_file_id=batch_file(client, lines), endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert batch.expires_at == batch.created_at + 3 and batch.completion_window == "24h"
        done = wait(client, batch.id)
        assert done.status == "expired" and done.expired_at and done.expired_at >= batch.expires_at, done
        conformance.check("Batch", httpx.get(f"{srv.base_url}/batches/{batch.id}").json())
        answered = results(client, done.output_file_id)
        expired = results(client, done.error_file_id)
        assert 1 <= len(answered) < 400 and len(answered) + len(expired) == 400
        assert sorted(r["custom_id"] for r in answered + expired) == sorted(f"q{i}" for i in range(400))
        for r in expired:
            assert r["response"] is None and r["error"]["code"] == "batch_expired", r
        counts = done.request_counts
        assert (counts.total, counts.completed, counts.failed) == (400, len(answered), len(expired))
        assert done.usage is not None and done.usage.output_tokens > 0
    finally:
        srv.stop()


def claims_in(server: LiveServer) -> list[str]:
    """The batches a server's runner claimed, from the log (``batch ID claimed by HOST:PID:...``; two
    servers on one home write one log, so the process id tells them apart)."""
    assert server.proc is not None
    return re.findall(rf"batch (batch_\w+) claimed by [^:\s]+:{server.proc.pid}:", server.log)


def one_each(client: openai.OpenAI, done: Any, n: int) -> None:
    """Every line of the batch answered exactly once, in the output file."""
    assert done.status == "completed" and done.request_counts.completed == n, done
    ids = [r["custom_id"] for r in results(client, done.output_file_id)]
    assert sorted(ids) == sorted(f"q{i}" for i in range(n)), f"{len(ids)} answers for {n} lines"


@pytest.mark.postgres
def test_two_servers_on_one_postgresql_answer_each_line_once_and_take_over_a_dead_ones_batch(
    pg_database: str, tmp_path: Path, tiny_model_dir: Path
) -> None:
    """Two servers share one database (and, as servers must until storage is shared, one home). Each
    batch is claimed by one of them and answered once; a SIGKILLed server's batch is finished by the
    other once its lease lapses (3 s here), without a line answered twice."""
    home = tmp_path / "home"
    env = {
        "SELFTUNE_DATABASE_URL": pg_database,
        "SELFTUNE_BATCH_CONCURRENCY": "1",
        "SELFTUNE_LEASE_SECONDS": "3",
        "SELFTUNE_WORKER": "false",
    }
    a = start_server(home, tiny_model_dir, **env)
    b = LiveServer(home, {"SELFTUNE_ENGINE": "torch", "SELFTUNE_DEFAULT_MODEL": "tiny", **env}).start()
    try:
        clients = [a.client(), b.client()]
        lines = [chat_line(i, max_tokens=8) for i in range(40)]
        created = [
            clients[k % 2].batches.create(
                input_file_id=batch_file(clients[k % 2], lines),
                endpoint="/v1/chat/completions",
                completion_window="24h",
            )
            for k in range(6)
        ]
        for batch in created:
            one_each(clients[0], wait(clients[0], batch.id, timeout=300), 40)
        ids = sorted(x.id for x in created)
        assert sorted(claims_in(a) + claims_in(b)) == ids, "each batch claimed once, by one server"
        assert claims_in(a) and claims_in(b), "both servers took batches"

        big = clients[0].batches.create(
            input_file_id=batch_file(clients[0], [chat_line(i, max_tokens=8) for i in range(300)]),
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )
        started = wait(clients[0], big.id, until=("in_progress",))
        while (started := clients[0].batches.retrieve(big.id)).request_counts.completed < 20:  # type: ignore[union-attr]
            assert started.status == "in_progress", started
            time.sleep(0.1)
        holder, other = (a, b) if big.id in claims_in(a) else (b, a)
        assert big.id not in claims_in(other)
        assert holder.proc is not None
        holder.proc.kill()  # SIGKILL: no clean shutdown, no release of the claim
        holder.proc.wait()
        done = wait(other.client(), big.id, timeout=300)
        one_each(other.client(), done, 300)
        assert big.id in claims_in(other), "the surviving server took the dead one's batch over"
        assert done.request_counts.total == 300 and done.request_counts.failed == 0
    finally:
        a.stop()
        b.stop()
