"""The legacy ``openai==0.28`` module API (``openai.File.create``...), run in its own interpreter path."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import LiveServer, chat_lines, run_legacy


def test_files_models_and_chat(server: LiveServer, tmp_path: Path) -> None:
    data = tmp_path / "mydata.jsonl"
    data.write_text(chat_lines(10))
    out = run_legacy(
        f"""
f = openai.File.create(file=open({str(data)!r}, "rb"), purpose="fine-tune")
listed = openai.File.list()
got = openai.File.retrieve(f.id)
content = openai.File.download(f.id)
models = openai.Model.list()
m = openai.Model.retrieve("gpt-3.5-turbo")
c = openai.ChatCompletion.create(model="gpt-3.5-turbo", messages=[{{"role": "user", "content": "Hello!"}}], max_tokens=4)
chunks = list(openai.ChatCompletion.create(model="tiny", messages=[{{"role": "user", "content": "Hi"}}], max_tokens=4, stream=True))
e = openai.ChatCompletion.create(engine="tiny", messages=[{{"role": "user", "content": "Hi"}}], max_tokens=2)
try:
    openai.File.retrieve("file-nope")
    err = None
except openai.error.InvalidRequestError as ex:
    err = [ex.http_status, ex.code]
deleted = openai.File.delete(f.id)
print(json.dumps({{
    "file": [f.object, f.filename, f.status, f.purpose, f.bytes], "listed": f.id in [x.id for x in listed.data],
    "got": got.id == f.id, "content": content.decode(), "models": [x.id for x in models.data], "m": m.id,
    "chat": [c.object, c.model, c.usage.total_tokens > 0, c.choices[0].message.role],
    "chunks": [dict(ch.choices[0].delta) for ch in chunks], "engine": e.model, "err": err, "deleted": deleted.deleted,
}}))
""",
        server.base_url,
    )
    assert out["file"] == ["file", "file", "processed", "fine-tune", len(chat_lines(10))]  # legacy names it "file"
    assert out["listed"] and out["got"] and out["content"] == chat_lines(10)
    assert "tiny" in out["models"] and out["m"] == "tiny"
    assert out["chat"] == ["chat.completion", "tiny", True, "assistant"]
    assert out["chunks"][0] == {"role": "assistant", "content": ""} and out["chunks"][-1] == {}
    assert out["engine"] == "tiny" and out["err"] == [404, "file_not_found"] and out["deleted"] is True


def test_trailing_slash_api_base_and_bad_request(server: LiveServer) -> None:
    out = run_legacy(
        """
models = openai.Model.list()
try:
    openai.ChatCompletion.create(model="tiny", messages=[], timeout=30)
    err = None
except openai.error.InvalidRequestError as ex:
    err = [ex.http_status, ex.param]
print(json.dumps({"n": len(models.data), "err": err}))
""",
        server.base_url + "/",
    )
    assert out["n"] >= 2 and out["err"] == [400, "messages"]
