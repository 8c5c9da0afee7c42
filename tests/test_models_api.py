"""/v1/models: listing, ids with ':' and '/', aliases, and delete rules."""

from __future__ import annotations

from urllib.parse import quote

import httpx
import openai
import pytest
from openai.types import Model

from selftune.store import ModelRecord, Store
from tests.conftest import Conformance, LiveServer


def add_finetuned(server: LiveServer, model_id: str, owner: str = "local") -> None:
    """Register a fine-tuned model row the way the worker will (jobs land in a later issue)."""
    store = Store(f"sqlite:///{server.home / 'selftune.db'}")
    store.insert_model(ModelRecord(model_id, owner, 1700000000, "tiny", str(server.home / "adapters" / "x"), None))
    store.close()


def test_list_retrieve_and_conformance(client: openai.OpenAI, server: LiveServer, conformance: Conformance) -> None:
    ids = [m.id for m in client.models.list()]
    assert "SmolLM2-135M-Instruct" in ids and "tiny" in ids
    assert "gpt-3.5-turbo" not in ids  # aliases resolve, but are not listed as models
    raw = httpx.get(f"{server.base_url}/models").json()
    conformance.check("ListModelsResponse", raw)
    m = client.models.retrieve("tiny")
    assert isinstance(m, Model) and (m.id, m.object, m.owned_by) == ("tiny", "model", "selftune")
    conformance.check("Model", m.model_dump(exclude_none=True))
    assert client.models.retrieve("gpt-4o-mini-2024-07-18").id == "tiny"  # the default model, by its real name


@pytest.mark.parametrize("model_id", ["ft:tiny:local:demo:abcd1234", "ft:org/tiny:local::ab12cd34"])
def test_ids_with_colons_and_slashes_in_every_encoding(
    client: openai.OpenAI, server: LiveServer, model_id: str
) -> None:
    add_finetuned(server, model_id)
    assert client.models.retrieve(model_id).id == model_id  # SDK >= 2.30: ':' kept, '/' -> %2F
    for path in (model_id, quote(model_id, safe=""), quote(model_id, safe=":/")):  # legacy, and raw old SDKs
        r = httpx.get(f"{server.base_url}/models/{path}")
        assert r.status_code == 200 and r.json()["id"] == model_id, path
    assert model_id in [m.id for m in client.models.list()]
    deleted = client.models.delete(model_id)
    assert (deleted.id, deleted.deleted, deleted.object) == (model_id, True, "model")
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve(model_id)
    assert e.value.code == "model_not_found"


def test_delete_rules(client: openai.OpenAI, conformance: Conformance) -> None:
    with pytest.raises(openai.PermissionDeniedError) as e:
        client.models.delete("tiny")
    assert e.value.code == "model_not_deletable" and "base model" in e.value.message
    with pytest.raises(openai.PermissionDeniedError):
        client.models.delete("gpt-3.5-turbo")
    with pytest.raises(openai.NotFoundError):
        client.models.delete("ft:tiny:local::nothere1")
    conformance.check("ErrorResponse", {"error": e.value.body})
