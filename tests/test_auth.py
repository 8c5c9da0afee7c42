"""API keys: 401 without a valid key, and one owner never sees another's objects."""

from __future__ import annotations

import io

import httpx
import openai
import pytest

from selftune.config import Settings
from selftune.errors import InvalidRequest
from tests.conftest import ALICE, BOB, LiveServer, chat_lines, run_cli
from tests.test_models_api import add_finetuned


def test_every_v1_route_needs_a_valid_key(keyed_server: LiveServer) -> None:
    for method, path in [("GET", "/files"), ("GET", "/models"), ("POST", "/chat/completions"), ("GET", "/files/x")]:
        r = httpx.request(method, keyed_server.base_url + path)
        assert r.status_code == 401, path
        assert r.json()["error"]["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError) as e:
        keyed_server.client("sk-wrong-key-123456").models.list()
    assert e.value.code == "invalid_api_key" and "sk-wrong-key" not in e.value.message
    assert httpx.get(keyed_server.url + "/health").status_code == 200


def test_owners_are_isolated(keyed_server: LiveServer) -> None:
    alice, bob = keyed_server.client(ALICE), keyed_server.client(BOB)
    f = alice.files.create(file=("a.jsonl", io.BytesIO(chat_lines(10).encode())), purpose="fine-tune")
    assert f.id in [x.id for x in alice.files.list()]
    assert f.id not in [x.id for x in bob.files.list()]
    for call in (bob.files.retrieve, bob.files.content, bob.files.delete):
        with pytest.raises(openai.NotFoundError):
            call(f.id)
    with pytest.raises(openai.BadRequestError):  # not even as a pagination cursor
        bob.files.list(after=f.id)
    model_id = "ft:tiny:alice:mine:abcd0001"
    add_finetuned(keyed_server, model_id, owner="alice")
    assert model_id in [m.id for m in alice.models.list()]
    assert model_id not in [m.id for m in bob.models.list()]
    for fn in (bob.models.retrieve, bob.models.delete):
        with pytest.raises(openai.NotFoundError):
            fn(model_id)
    with pytest.raises(openai.NotFoundError):
        bob.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "hi"}])
    assert alice.files.retrieve(f.id).id == f.id  # still there for its owner


def test_keys_parse_and_open_binds_are_refused(tmp_path: object) -> None:
    s = Settings(api_keys="sk-a:alice, sk-b ,", home=tmp_path)  # type: ignore[arg-type]
    assert s.keys["sk-a"] == "alice" and s.keys["sk-b"].startswith("user-") and len(s.keys) == 2
    Settings(host="127.0.0.1").check_bind()
    Settings(host="0.0.0.0", api_keys="sk-a").check_bind()
    with pytest.raises(InvalidRequest, match="without API keys"):
        Settings(host="0.0.0.0").check_bind()
    proc = run_cli("serve", "--host", "0.0.0.0", "--port", "1", env={"SELFTUNE_HOME": str(tmp_path)}, check=False)
    assert proc.returncode != 0 and "refusing to listen on 0.0.0.0" in proc.stderr


def test_local_mode_is_announced(server: LiveServer) -> None:
    assert "local mode" in server.log
