"""Shared fixtures: a tiny random-init model built here, live servers on loopback, SDK clients.

Servers run as real subprocesses (``python -m selftune serve``) on 127.0.0.1 and free ports, and
are called with the real ``openai`` SDK (``max_retries=0``). Nothing of ours is mocked.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from selftune.live import LiveServer, build_tiny_model, serve_model
from selftune.live_cluster import PG_ADMIN
from selftune.live_cluster import new_database as live_database

REPO = Path(__file__).resolve().parent.parent
SPEC_PATH = REPO.parent / "shared" / "conformance" / "openai-openapi.yaml"
SCHEMAS_PATH = REPO / "tests" / "conformance" / "openai-schemas.json"
LEGACY_SDK = Path(os.environ.get("SELFTUNE_LEGACY_OPENAI", REPO / ".venv" / "legacy-openai"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failed test that used a live server gets that server's log in its report, with every thread's
    stack at the moment of failure (SIGUSR1: ``selftune serve`` registers faulthandler), so a hang in CI
    says what the server was waiting on."""
    report = yield
    if report.failed and call.when == "call":
        for name, value in getattr(item, "funcargs", {}).items():
            if isinstance(value, LiveServer) and value.proc is not None and value.proc.poll() is None:
                value.proc.send_signal(signal.SIGUSR1)
                time.sleep(1)
                report.sections.append((f"server log ({name}, last 8000 characters)", value.log[-8000:]))
    return report


# --- workers (make test TEST_WORKERS=N: pytest-xdist, -n N --dist loadscope --no-loadscope-reorder) ---

SMOL_FIXTURES = ("smol_server", "trivia_job")
"""The real SmolLM2 served, and a model trained on it (session fixtures)."""
SMOL_FILES = (
    "test_quality_smol",
    "test_function_calling",
    "test_dpo_smol",
    "test_export",
    "test_seeds",
    "test_llamacpp",
    "test_rft_smol",
)
"""The files whose tests use them: one unit of work, on one worker, so that each is built once. It
is the longest unit, so it goes first and the other worker takes the rest meanwhile."""


def work_unit(file_stem: str) -> str:
    """Each test file is a unit of work (its module fixtures are built once), but the SmolLM2 files
    are one together."""
    return "smollm2" if file_stem in SMOL_FILES else file_stem


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On workers, the SmolLM2 files first (the longest unit first); and a test elsewhere that uses
    a SmolLM2 fixture is an error (on workers it would start a second server on another one)."""
    strays = [
        i.nodeid
        for i in items
        if set(SMOL_FIXTURES) & set(getattr(i, "fixturenames", ())) and i.path.stem not in SMOL_FILES
    ]
    if strays:
        raise pytest.UsageError(f"add their files to SMOL_FILES in tests/conftest.py: {strays}")
    if hasattr(config, "workerinput"):  # collected in a pytest-xdist worker
        items.sort(key=lambda i: work_unit(i.path.stem) != "smollm2")


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """pytest-xdist's scheduler by scope, with our units (``work_unit``) as the scopes. (Its own
    ``xdist_group`` marks do not group under pytest 9.2, which ignores the node id it rewrites.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ByWorkUnit(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(Path(nodeid.split("::", 1)[0]).stem)

    return ByWorkUnit(config, log)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


# --- live servers (selftune.live, shared with make bench) -----------------------------------------


def run_cli(
    *args: str, env: dict[str, str] | None = None, check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "selftune", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
        input=input,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"selftune {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def start_server(home: Path, tiny_model_dir: Path, **env: str) -> LiveServer:
    """A server with the tiny model, on the PyTorch engine unless ``SELFTUNE_ENGINE`` says otherwise
    (llama.cpp is tested on SmolLM2 in test_llamacpp.py, and on the tiny model there too)."""
    return serve_model(home, "tiny", tiny_model_dir, **{"SELFTUNE_ENGINE": "torch", **env})


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[LiveServer]:
    """Local mode (no keys), default model = the tiny model, a 2 GiB upload limit, python graders
    stopped after 5 s (test_graders.py's endless loop)."""
    srv = start_server(
        tmp_path_factory.mktemp("home-local"),
        tiny_model_dir,
        SELFTUNE_MAX_UPLOAD_BYTES=str(2**31),
        SELFTUNE_PYTHON_GRADER_TIMEOUT="5",
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def smol_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The server exactly as `make serve` runs it: the bundled SmolLM2, converted on first start."""
    srv = LiveServer(tmp_path_factory.mktemp("home-smol")).start(timeout=600)
    yield srv
    srv.stop()


# --- the trivia fine-tune on SmolLM2 (shared by the seed and export tests) -----------------------------

MARV = "Marv is a factual chatbot that is also sarcastic."


def trivia_jsonl(path: Path, n: int = 40, *, start: int = 0, step: int = 1) -> Path:
    with path.open("w") as f:
        for q, a in trivia_pairs(start + n)[start::step]:
            msgs = [
                {"role": "system", "content": MARV},
                {"role": "user", "content": q},
                {"role": "assistant", "content": a},
            ]
            f.write(json.dumps({"messages": msgs}) + "\n")
    return path


def trivia_pairs(n: int) -> list[tuple[str, str]]:
    convs = yaml.safe_load(files("chatterbot_corpus").joinpath("data/english/trivia.yml").read_text("utf-8"))
    return [(str(c[0]), str(c[1])) for c in convs["conversations"] if len(c) == 2][:n]


@dataclass(frozen=True)
class TriviaJob:
    job_id: str
    model: str
    seconds: float


@pytest.fixture(scope="session")
def trivia_job(smol_server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> TriviaJob:
    """40 chatterbot trivia pairs (Marv's system prompt), 3 epochs, with 20 held-out pairs as the
    validation file: trained once through the API, then measured by the seed test and exported."""
    client = smol_server.client()
    folder = tmp_path_factory.mktemp("trivia")
    train = client.files.create(file=trivia_jsonl(folder / "trivia.jsonl", 40).open("rb"), purpose="fine-tune")
    held = client.files.create(file=trivia_jsonl(folder / "held.jsonl", 20, start=40).open("rb"), purpose="fine-tune")
    t0 = time.monotonic()
    job = client.fine_tuning.jobs.create(
        model="SmolLM2-135M-Instruct",
        training_file=train.id,
        validation_file=held.id,
        hyperparameters={"n_epochs": 3},
        suffix="trivia",
        seed=42,  # the export tests' numbers are then the same on every run
    )
    while job.status not in ("succeeded", "failed", "cancelled"):
        time.sleep(1)
        job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model is not None
    return TriviaJob(job.id, job.fine_tuned_model, time.monotonic() - t0)


ALICE, BOB = "sk-alice-0123456789", "sk-bob-9876543210"


@pytest.fixture(scope="session")
def keyed_server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[LiveServer]:
    """Two owners, a 1 MiB upload limit."""
    srv = start_server(
        tmp_path_factory.mktemp("home-keyed"),
        tiny_model_dir,
        SELFTUNE_API_KEYS=f"{ALICE}:alice,{BOB}:bob",
        SELFTUNE_MAX_UPLOAD_BYTES=str(1024 * 1024),
    )
    yield srv
    srv.stop()


@pytest.fixture
def client(server: LiveServer) -> openai.OpenAI:
    return server.client()


# --- PostgreSQL ----------------------------------------------------------------------------------


@contextmanager
def new_database() -> Iterator[str]:
    """``live_cluster.new_database``, or a skip that says why when PostgreSQL is not reachable."""
    psycopg = pytest.importorskip("psycopg")
    try:
        psycopg.connect(PG_ADMIN).close()
    except psycopg.OperationalError as e:
        pytest.skip(
            f"PostgreSQL is not reachable on 127.0.0.1:5432 ({e.__class__.__name__}); start it to test that path"
        )
    with live_database() as url:
        yield url


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this run, dropped afterwards."""
    with new_database() as url:
        yield url


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A PostgreSQL database of one test's own (for servers that must start from an empty one)."""
    with new_database() as url:
        yield url


# --- the legacy 0.28 SDK, run in its own interpreter path ------------------------------------------


def run_legacy(code: str, base_url: str, api_key: str = "sk-test", timeout: float = 300) -> Any:
    """Run ``code`` with ``import openai`` resolving to openai==0.28.1; it must print one JSON value."""
    if not (LEGACY_SDK / "openai" / "__init__.py").is_file():
        pytest.skip(f"legacy openai==0.28.1 not installed at {LEGACY_SDK} (run `make install`)")
    prelude = f"import json, openai\nopenai.api_base = {base_url!r}\nopenai.api_key = {api_key!r}\n"
    proc = subprocess.run(
        [sys.executable, "-c", prelude + code],
        env={**os.environ, "PYTHONPATH": str(LEGACY_SDK)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"legacy snippet failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- the official OpenAPI schemas -----------------------------------------------------------------


def _openapi_nullable(node: Any) -> Any:
    """OpenAPI 3.0 idioms kept in this spec, as JSON Schema 2020-12: ``nullable: true`` (111 times)
    also allows null, and a boolean ``exclusiveMinimum`` applies to ``minimum``."""
    if isinstance(node, list):
        return [_openapi_nullable(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _openapi_nullable(v) for k, v in node.items()}
    if isinstance(out.get("exclusiveMinimum"), bool) and out.pop("exclusiveMinimum"):
        out["exclusiveMinimum"] = out.pop("minimum", 0)
    if out.pop("nullable", False) is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


# Where the official schema contradicts OpenAI's own documented wire format, we follow the wire
# format (which the SDKs parse). Each entry: (schema, path pattern, the value we send, why).
DEVIATIONS: list[tuple[str, tuple[str, ...], Any, str]] = [
    (
        "CreateChatCompletionStreamResponse",
        ("choices", "*", "finish_reason"),
        None,
        "null until the last chunk: the spec's own streaming example sends finish_reason null",
    ),
    (
        "CreateCompletionResponse",
        ("choices", "*", "finish_reason"),
        None,
        "streamed chunks share the response's shape, and OpenAI sends finish_reason null until a choice ends",
    ),
    (
        "FineTuningJob",
        ("error",),
        {"code": None, "message": None, "param": None},
        "the real API (and the spec's create examples) send an all-null error until a job fails; "
        "code written against it reads job.error.code",
    ),
]


class Conformance:
    def __init__(self, spec: dict[str, Any]) -> None:
        resource = DRAFT202012.create_resource(_openapi_nullable(spec))
        self.registry: Registry[Any] = Registry().with_resource("urn:openai", resource)

    def check(self, schema: str, body: Any) -> None:
        validator = Draft202012Validator({"$ref": f"urn:openai#/components/schemas/{schema}"}, registry=self.registry)
        errors = [e for e in validator.iter_errors(body) if not _deviation(schema, tuple(e.path), e.instance)]
        errors.sort(key=lambda e: list(e.path))
        assert not errors, f"{schema}: " + "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5])


def _deviation(schema: str, path: tuple[Any, ...], value: Any) -> bool:
    """Whether an error is a listed deviation, in its schema or in a list of it (``data[i]...``)."""
    for name, pattern, sent, _why in DEVIATIONS:
        if value != sent or len(path) < len(pattern):
            continue
        if schema != name and not (schema.startswith("List") and name in schema):
            continue
        tail = path[len(path) - len(pattern) :]
        if all(p == "*" or p == q for p, q in zip(pattern, tail, strict=True)):
            return True
    return False


@pytest.fixture(scope="session")
def conformance() -> Conformance:
    """The official schemas, from the committed extract (tests/conformance/openai-schemas.json), so
    the checks run on every clean clone; test_conformance.py keeps the extract equal to the spec."""
    return Conformance(json.loads(SCHEMAS_PATH.read_text()))


def preference_lines(n: int, *, offset: int = 0) -> str:
    """``n`` small, valid preference pairs (DPO format) in JSONL."""
    rows = [
        {
            "input": {"messages": [{"role": "user", "content": f"question {i}"}]},
            "preferred_output": [{"role": "assistant", "content": f"hello world {i}"}],
            "non_preferred_output": [{"role": "assistant", "content": f"the lazy dog {i}"}],
        }
        for i in range(offset, offset + n)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows)


def chat_lines(n: int, *, offset: int = 0) -> str:
    """``n`` small, valid chat examples in JSONL."""
    rows = [
        {"messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]}
        for i in range(offset, offset + n)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows)
