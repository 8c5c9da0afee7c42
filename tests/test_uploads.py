"""The Uploads API through the real SDK: a training file sent in parts becomes a normal, validated file."""

from __future__ import annotations

import hashlib
import io
import json
import threading
from pathlib import Path

import httpx
import openai
import pytest
from openai.types import Upload

from tests.conftest import Conformance, LiveServer, chat_lines


def test_a_chunked_upload_becomes_a_validated_file(client: openai.OpenAI, server: LiveServer, tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text(chat_lines(40))
    data = path.read_bytes()
    upload = client.uploads.upload_file_chunked(
        file=path, mime_type="application/jsonl", purpose="fine-tune", part_size=700, md5=hashlib.md5(data).hexdigest()
    )
    assert upload.status == "completed" and upload.file is not None and upload.bytes == len(data)
    assert upload.file.filename == "train.jsonl" and upload.file.purpose == "fine-tune"
    assert client.files.content(upload.file.id).content == data
    job = client.fine_tuning.jobs.create(model="tiny", training_file=upload.file.id, hyperparameters={"n_epochs": 1})
    client.fine_tuning.jobs.cancel(job.id)  # the file is accepted like any fine-tune upload
    assert not (server.home / "files" / ".uploads" / upload.id).exists()  # its parts are gone


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_a_300_mb_upload_keeps_the_servers_memory_flat(
    client: openai.OpenAI, server: LiveServer, tmp_path: Path
) -> None:
    """The SDK's chunked upload of a 300 MB batch file (its default 64 MB parts): parts go to disk and
    are joined to disk, so the server's resident memory, sampled every 20 ms, grows by under 100 MB."""
    path = tmp_path / "big.jsonl"
    line = {"custom_id": "", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "tiny"}}
    block = "".join(json.dumps({**line, "custom_id": f"r{i}"}) + "\n" for i in range(10_000)).encode()
    md5 = hashlib.md5(usedforsecurity=False)
    with path.open("wb") as f:
        while f.tell() < 300 * 1024 * 1024:
            f.write(block)
            md5.update(block)
    size = path.stat().st_size
    assert server.proc is not None
    pid = server.proc.pid
    before, peak, done = rss_mb(pid), [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb(pid))
            done.wait(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        upload = client.uploads.upload_file_chunked(
            file=path, mime_type="application/jsonl", purpose="batch", md5=md5.hexdigest()
        )
    finally:
        done.set()
        sampler.join()
    assert upload.status == "completed" and upload.file is not None and upload.file.bytes == size
    print(f"\n300 MB upload: server RSS {before:.0f} MB before, {peak[0]:.0f} MB at most")
    assert peak[0] - before < 100, (before, peak[0])
    with client.files.with_streaming_response.content(upload.file.id) as r:
        assert sum(len(chunk) for chunk in r.iter_bytes()) == size
    client.files.delete(upload.file.id)


def raw_upload(server: LiveServer, data: bytes, purpose: str = "fine-tune") -> tuple[str, list[str]]:
    """An upload with its parts sent (two halves), not completed."""
    r = httpx.post(
        f"{server.base_url}/uploads",
        json={"filename": "d.jsonl", "purpose": purpose, "bytes": len(data), "mime_type": "application/jsonl"},
    ).json()
    parts = []
    for piece in (data[: len(data) // 2], data[len(data) // 2 :]):
        part = httpx.post(f"{server.base_url}/uploads/{r['id']}/parts", files={"data": ("blob", piece)}).json()
        assert part["object"] == "upload.part" and part["upload_id"] == r["id"]
        parts.append(part["id"])
    return r["id"], parts


def test_completion_checks_order_size_md5_and_content(
    client: openai.OpenAI, server: LiveServer, conformance: Conformance
) -> None:
    data = chat_lines(12).encode()
    upload_id, parts = raw_upload(server, data)
    with pytest.raises(openai.BadRequestError) as e:
        client.uploads.complete(upload_id, part_ids=parts[:1])
    assert e.value.param == "part_ids" and "bytes" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.uploads.complete(upload_id, part_ids=[*parts[:1], "part_nope"])
    assert e.value.param == "part_ids"
    with pytest.raises(openai.BadRequestError) as e:
        client.uploads.complete(upload_id, part_ids=parts, md5="0" * 32)
    assert e.value.param == "md5"
    # Parts in the wrong order are the wrong bytes: a fine-tune file is validated and refused, by line.
    with pytest.raises(openai.BadRequestError) as e:
        client.uploads.complete(upload_id, part_ids=parts[::-1])
    assert "d.jsonl:1" in e.value.message
    raw = httpx.post(f"{server.base_url}/uploads/{upload_id}/complete", json={"part_ids": parts}).json()
    conformance.check("Upload", raw)
    done = Upload.model_validate(raw)
    assert done.status == "completed" and client.files.content(done.file.id).content == data  # type: ignore[union-attr]
    with pytest.raises(openai.BadRequestError):
        client.uploads.complete(upload_id, part_ids=parts)  # once only


def test_cancel_deletes_the_parts(client: openai.OpenAI, server: LiveServer) -> None:
    upload_id, parts = raw_upload(server, b"x" * 1000, purpose="batch")
    assert (server.home / "files" / ".uploads" / upload_id / parts[0]).is_file()
    assert client.uploads.cancel(upload_id).status == "cancelled"
    assert not (server.home / "files" / ".uploads" / upload_id).exists()
    with pytest.raises(openai.BadRequestError):
        client.uploads.parts.create(upload_id, data=io.BytesIO(b"more"))
    with pytest.raises(openai.BadRequestError) as e:
        client.uploads.create(filename="a", purpose="nonsense", bytes=1, mime_type="text/plain")  # type: ignore[arg-type]
    assert e.value.param == "purpose"
