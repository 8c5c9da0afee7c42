"""/v1/files through the real openai SDK against a live server."""

from __future__ import annotations

import io
import json
import socket
import time
from pathlib import Path

import httpx
import openai
import pytest
from openai.types import FileDeleted, FileObject

from tests.conftest import Conformance, LiveServer, chat_lines


def upload(
    client: openai.OpenAI, content: str | bytes, name: str = "train.jsonl", purpose: str = "fine-tune"
) -> FileObject:
    data = content.encode() if isinstance(content, str) else content
    return client.files.create(file=(name, io.BytesIO(data)), purpose=purpose)  # type: ignore[arg-type]


def test_upload_retrieve_content_delete(client: openai.OpenAI, conformance: Conformance, server: LiveServer) -> None:
    body = chat_lines(12)
    f = upload(client, body)
    assert f.id.startswith("file-") and len(f.id) == 29
    assert (f.object, f.purpose, f.status, f.bytes, f.filename) == (
        "file",
        "fine-tune",
        "processed",
        len(body),
        "train.jsonl",
    )
    raw = httpx.get(f"{server.base_url}/files/{f.id}").json()
    conformance.check("OpenAIFile", raw)
    assert FileObject.model_validate(raw) == client.files.retrieve(f.id)
    assert client.files.content(f.id).read() == body.encode()
    deleted = client.files.delete(f.id)
    assert isinstance(deleted, FileDeleted) and deleted.deleted and deleted.id == f.id
    conformance.check("DeleteFileResponse", deleted.model_dump())
    with pytest.raises(openai.NotFoundError) as e:
        client.files.retrieve(f.id)
    assert e.value.code == "file_not_found"
    with pytest.raises(openai.NotFoundError):
        client.files.content(f.id)
    with pytest.raises(openai.NotFoundError):
        client.files.delete(f.id)


def test_list_filters_orders_and_paginates(server: LiveServer, conformance: Conformance) -> None:
    client = server.client()
    purpose = "user_data"
    ids = [upload(client, f"note {i}", name=f"n{i}.txt", purpose=purpose).id for i in range(5)]
    page = client.files.list(purpose=purpose, limit=2)
    assert [f.id for f in page.data] == ids[::-1][:2] and page.has_more
    raw = httpx.get(f"{server.base_url}/files", params={"purpose": purpose, "limit": 2}).json()
    conformance.check("ListFilesResponse", raw)
    assert (raw["first_id"], raw["last_id"]) == (ids[4], ids[3])
    # The SDK's auto-pagination must visit every file once, and stop.
    seen = [f.id for f in client.files.list(purpose=purpose, limit=2)]
    assert seen == ids[::-1]
    asc = client.files.list(purpose=purpose, order="asc", after=ids[1])
    assert [f.id for f in asc.data] == ids[2:] and not asc.has_more
    assert all(f.purpose == purpose for f in client.files.list(purpose=purpose))
    with pytest.raises(openai.BadRequestError) as e:
        client.files.list(after="file-doesnotexist")
    assert e.value.param == "after"
    with pytest.raises(openai.BadRequestError):
        client.files.list(limit=0)


def test_bad_fine_tune_file_reports_every_problem(client: openai.OpenAI) -> None:
    good = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    rows = [
        good,
        "{oops",
        json.dumps({"messages": [{"role": "assitant", "content": "x"}]}),
        json.dumps([1]),
        json.dumps({"messages": [{"role": "user", "content": "q"}]}),
        json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]}),
        good.replace('"a"}', '"a", "weight": 7}'),
        json.dumps({"prompt": "p", "completion": "c"}),
    ]
    before = len(client.files.list().data)
    with pytest.raises(openai.BadRequestError) as e:
        upload(client, "\n".join(rows) + "\n", name="broken.jsonl")
    err = e.value.body
    assert isinstance(err, dict)
    assert err["type"] == "invalid_request_error" and err["code"] == "invalid_file_format" and err["param"] == "file"
    bad_lines = sorted({p["line"] for p in err["problems"] if p["level"] == "error"})
    assert bad_lines == [2, 3, 4, 5, 6, 7, 8]
    for n in bad_lines:
        assert f"broken.jsonl:{n}: error" in err["message"]
    assert len(client.files.list().data) == before  # nothing registered


def test_a_tool_call_with_arguments_that_are_not_json_is_refused_at_upload(client: openai.OpenAI) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{city: Paris}"}}
    row = {
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "18 C"},
            {"role": "assistant", "content": "18 C."},
        ],
        "tools": tools,
    }
    good = json.dumps({**row, "messages": [*row["messages"][:1], {"role": "assistant", "content": "a"}]})
    with pytest.raises(openai.BadRequestError) as e:
        upload(client, f"{good}\n{good}\n{json.dumps(row)}\n", name="calls.jsonl")
    err = e.value.body
    assert isinstance(err, dict) and err["code"] == "invalid_file_format"
    assert [(p["line"], p["key"]) for p in err["problems"] if p["level"] == "error"] == [
        (3, "invalid_tool_call_arguments")
    ]
    assert "calls.jsonl:3: error: message 2 tool_calls[1] (get_weather): arguments are not valid JSON" in err["message"]


def test_content_is_sniffed_not_the_filename(client: openai.OpenAI) -> None:
    # The legacy SDK names every upload "file"; a CSV named .jsonl is still caught by content.
    ok = upload(client, chat_lines(10), name="file")
    assert ok.status == "processed" and ok.filename == "file"
    with pytest.raises(openai.BadRequestError) as e:
        upload(client, "question,answer\nhi,hello\n", name="train.jsonl")
    assert "looks like CSV" in e.value.message and "selftune prepare" in e.value.message


def test_purpose_and_expiry(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        upload(client, "x", purpose="nonsense")
    assert e.value.param == "purpose"
    f = client.files.create(
        file=("a.txt", io.BytesIO(b"x")), purpose="user_data", expires_after={"anchor": "created_at", "seconds": 3600}
    )
    assert f.expires_at == f.created_at + 3600
    with pytest.raises(openai.BadRequestError):
        client.files.create(
            file=("a.txt", io.BytesIO(b"x")), purpose="user_data", expires_after={"anchor": "created_at", "seconds": 5}
        )


def test_upload_limit_is_a_clear_400(keyed_server: LiveServer) -> None:
    from tests.conftest import ALICE

    client = keyed_server.client(ALICE)
    with pytest.raises(openai.BadRequestError) as e:
        upload(client, b"x" * (2 * 1024 * 1024), name="big.bin", purpose="user_data")
    assert e.value.code == "file_too_large" and "SELFTUNE_MAX_UPLOAD_BYTES" in e.value.message

    # Just under the limit, with an undeclared length (chunked), the streaming check still holds.
    def chunks() -> object:
        for _ in range(3):
            yield b"y" * (512 * 1024)

    boundary = "b0undary"

    def body() -> object:
        yield f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nuser_data\r\n'.encode()
        yield f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n'.encode()
        yield from chunks()  # type: ignore[misc]
        yield f"\r\n--{boundary}--\r\n".encode()

    r = httpx.post(
        f"{keyed_server.base_url}/files",
        content=body(),  # type: ignore[arg-type]
        headers={"Authorization": f"Bearer {ALICE}", "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "file_too_large"
    assert not list((keyed_server.home / "files" / ".tmp").iterdir())


def test_disconnect_mid_upload_registers_nothing(server: LiveServer, client: openai.OpenAI) -> None:
    before = {f.id for f in client.files.list()}
    boundary = "cut"
    head = (
        f"POST /v1/files HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: 10000000\r\n\r\n"
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nuser_data\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="cut.txt"\r\n\r\n'
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(head + b"z" * 3_000_000)
    time.sleep(1.0)
    assert {f.id for f in client.files.list()} == before
    assert not list((server.home / "files" / ".tmp").iterdir())
    assert server.health()["status"] == "ok"


def _rss_peak_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to read the server's peak RSS")
def test_large_upload_streams_to_disk(server: LiveServer, tmp_path: Path) -> None:
    """A 1 GB upload must not raise the server's peak RSS by more than ~50 MB."""
    assert server.proc is not None
    big = tmp_path / "big.bin"
    with big.open("wb") as f:
        block = b"0123456789abcdef" * 65536  # 1 MiB
        for _ in range(1024):
            f.write(block)
    before = _rss_peak_kb(server.proc.pid)
    with big.open("rb") as fh:
        obj = server.client().files.create(file=fh, purpose="user_data")
    grew_mb = (_rss_peak_kb(server.proc.pid) - before) / 1024
    assert obj.bytes == 1024 * 1024 * 1024
    assert grew_mb < 50, f"peak RSS grew by {grew_mb:.0f} MB during a 1 GB upload"
    server.client().files.delete(obj.id)
