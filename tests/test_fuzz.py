"""Schema-driven fuzzing of every route the server documents (``bench.fuzz``): requests that fit the
served OpenAPI document and requests that break it, none answered 5xx, every answer (errors
included) as the document declares. ``SELFTUNE_FUZZ_EXAMPLES`` cases per operation and mode (20
here, derandomized: CI replays the same requests); ``make bench`` sends more than 2,000."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.fuzz import fuzz
from selftune.live import watching
from tests.conftest import start_server

EXAMPLES = int(os.environ.get("SELFTUNE_FUZZ_EXAMPLES", "20"))


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Any:
    srv = start_server(tmp_path_factory.mktemp("home-fuzz"), tiny_model_dir, SELFTUNE_MAX_CHOICES_PER_REQUEST="8")
    yield srv
    srv.stop()


def test_no_generated_request_is_a_server_error_or_an_answer_outside_the_schema(fuzzed: Any) -> None:
    with watching(fuzzed, chat=False):
        report = fuzz(fuzzed, EXAMPLES)
    print(report.summary())
    assert not report.failures, "\n\n".join(report.failures[:10])
    assert report.operations >= 30 and report.requests >= 20 * report.operations
    # The cases reached the handlers, not only the lookups in front of them.
    assert report.statuses[200] >= 100 and report.statuses[400] >= 100
    assert fuzzed.proc.poll() is None


def test_the_served_document_declares_every_error_answer(fuzzed: Any) -> None:
    """Without this, the fuzzing could not check an error answer at all: undeclared, it is unchecked."""
    doc = httpx.get(fuzzed.url + "/openapi.json", timeout=30).json()
    operations = [(method, path, op) for path, item in doc["paths"].items() for method, op in item.items()]
    assert len(operations) >= 30
    for method, path, op in operations:
        for status in ("4XX", "5XX"):
            schema = op["responses"][status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (method, path, status)
    error = doc["components"]["schemas"]["ErrorObject"]
    assert set(error["required"]) == {"message", "type", "param", "code"}
