"""The schema: the tables as they are now, and the frozen records their rows are returned as.

Databases are built and upgraded to these tables by ``selftune.migrations`` (Alembic), never by
``create_all``: a change here comes with a new migration. ``selftune.store`` holds the queries.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from sqlalchemy import JSON, BigInteger, Boolean, Column, Float, Integer, MetaData, String, Table, Text, false

from selftune.methods import Hyperparameters, MethodType

metadata = MetaData()


def claim_columns() -> list[Column[Any]]:
    """Who works on a row in the background (a worker on a job, a server on a batch or an export),
    and until when by the database's clock, unless renewed (``selftune.claims``)."""
    return [Column("claimed_by", String(256), nullable=True), Column("lease_until", Float, nullable=True)]


UNCLAIMED: dict[str, Any] = {"claimed_by": None, "lease_until": None}
"""The claim columns' values once nobody works on the row."""

files = Table(
    "files",
    metadata,
    # seq orders rows strictly (created_at has only one-second resolution) and backs cursors.
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("owner", String(128), nullable=False, index=True),
    Column("filename", Text, nullable=False),
    Column("purpose", String(32), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("created_at", Integer, nullable=False),
    Column("expires_at", Integer, nullable=True),
    Column("status", String(16), nullable=False),
    Column("status_details", Text, nullable=True),
    # Deleted rows stay (without their bytes) so a pagination cursor pointing at one still works.
    Column("deleted", Boolean, nullable=False, default=False),
    # SHA-256 of the bytes, and the validator's verdict at upload (selftune.files): later stages
    # trust the verdict while the bytes are unchanged, instead of parsing the file again.
    Column("checksum", String(64), nullable=True),
    Column("validation", JSON, nullable=True),
)

models_table = Table(
    "models",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(512), nullable=False, unique=True),
    Column("owner", String(128), nullable=False, index=True),
    Column("created", Integer, nullable=False),
    Column("base_model", String(512), nullable=False),
    Column("adapter_path", Text, nullable=False),
    Column("job_id", String(64), nullable=True),
    Column("deleted", Boolean, nullable=False, default=False),
)

base_models = Table(
    "base_models",
    metadata,
    Column("name", String(512), primary_key=True),
    Column("source", String(16), nullable=False),
    Column("path", Text, nullable=False),
    Column("gguf_file", Text, nullable=True),
    Column("created", Integer, nullable=False),
    Column("qlora", Boolean, nullable=False, server_default=false()),
    # SHA-256 of the weights as registered, and where their bytes are in a remote store (``bases/
    # SHA/NAME``): another machine materialises the model from there, or refuses a copy of its own
    # whose hash differs (``catalog``).
    Column("sha256", String(64), nullable=True),
    Column("stored_key", Text, nullable=True),
)

workers = Table(
    "workers",
    metadata,
    # One row per running `selftune worker` (or server's worker thread), by its holder id; refreshed
    # while it runs (last_seen by the database's clock), removed when it stops.
    Column("id", String(256), primary_key=True),
    Column("host", String(256), nullable=False),
    Column("device", String(64), nullable=False),
    Column("gpus", Integer, nullable=False),
    Column("memory_bytes", BigInteger, nullable=False),
    Column("slots", Integer, nullable=False),
    Column("started_at", Integer, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("jobs", JSON, nullable=False),
    Column("nproc", Integer, nullable=False, server_default="1"),
    Column("group_name", String(256), nullable=True),
    Column("nnodes", Integer, nullable=False, server_default="1"),
)

rendezvous = Table(
    "rendezvous",
    metadata,
    # One row per job a group of workers trains together (selftune.groups): where its machines meet.
    Column("job_id", String(64), primary_key=True),
    Column("group_name", String(256), nullable=False),
    Column("endpoint", String(512), nullable=False),
    Column("rdzv_id", String(128), nullable=False),
    Column("nnodes", Integer, nullable=False),
    Column("nproc", Integer, nullable=False),
    Column("seats", Integer, nullable=False),
    Column("members", JSON, nullable=False),
)


jobs = Table(
    "jobs",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("owner", String(128), nullable=False, index=True),
    Column("created_at", Integer, nullable=False),
    Column("status", String(32), nullable=False, index=True),
    Column("model", String(512), nullable=False),
    Column("base_model", String(512), nullable=False),
    Column("init_adapter", Text, nullable=True),
    Column("training_file", String(64), nullable=False),
    Column("validation_file", String(64), nullable=True),
    Column("hyperparameters", JSON, nullable=False),
    Column("method", JSON, nullable=False),
    Column("suffix", String(64), nullable=True),
    Column("seed", Integer, nullable=False),
    Column("metadata", JSON, nullable=True),
    Column("integrations", JSON, nullable=True),
    Column("model_name", String(512), nullable=False),
    Column("fine_tuned_model", String(512), nullable=True),
    Column("error", JSON, nullable=True),
    Column("finished_at", Integer, nullable=True),
    Column("trained_tokens", BigInteger, nullable=True),
    Column("estimated_finish", Integer, nullable=True),
    Column("result_files", JSON, nullable=False),
    Column("quality", JSON, nullable=True),
    *claim_columns(),
)

job_events = Table(
    "job_events",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("job_id", String(64), nullable=False, index=True),
    Column("created_at", Integer, nullable=False),
    Column("level", String(8), nullable=False),
    Column("type", String(16), nullable=False),
    Column("message", Text, nullable=False),
    Column("data", JSON, nullable=True),
)

checkpoints = Table(
    "checkpoints",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("job_id", String(64), nullable=False, index=True),
    Column("created_at", Integer, nullable=False),
    Column("step_number", Integer, nullable=False),
    Column("metrics", JSON, nullable=False),
    Column("adapter_path", Text, nullable=False),
)

objects = Table(
    "objects",
    metadata,
    # The API's smaller resources, kept whole as their JSON: stored responses, batches and uploads.
    # ``kind`` names the resource; ``status`` is a column so that compare-and-set and the batch
    # runner's queue can query it.
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("kind", String(16), nullable=False, index=True),
    Column("owner", String(128), nullable=False, index=True),
    Column("created_at", Integer, nullable=False),
    Column("status", String(32), nullable=False),
    Column("data", JSON, nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    *claim_columns(),
)


@dataclass(frozen=True)
class ObjectRecord:
    id: str
    kind: str
    owner: str
    created_at: int
    status: str
    data: dict[str, Any]
    claimed_by: str | None = None
    lease_until: float | None = None


@dataclass(frozen=True)
class JobRecord:
    id: str
    owner: str
    created_at: int
    status: str
    model: str
    """What the job reports as its model: the base model's real name, or the ``ft:`` model continued."""
    base_model: str
    init_adapter: str | None
    training_file: str
    validation_file: str | None
    hyperparameters: Hyperparameters
    """Resolved at creation; stored once (the ``method.<type>`` settings hold none of them)."""
    method: dict[str, Any]
    """``{"type": ...}`` and whatever else the method needs besides its hyperparameters."""
    suffix: str | None
    seed: int
    metadata: dict[str, str] | None
    integrations: list[dict[str, Any]] | None
    model_name: str
    """The ``ft:`` name the model gets on success (decided at creation; hidden until then)."""
    fine_tuned_model: str | None = None
    error: dict[str, Any] | None = None
    finished_at: int | None = None
    trained_tokens: int | None = None
    estimated_finish: int | None = None
    result_files: list[str] = field(default_factory=list)
    quality: dict[str, Any] | None = None
    """The quality guard's finding once the job succeeded (``selftune.eval.quality.Quality.to_dict``)."""
    claimed_by: str | None = None
    """The worker training the job (while ``running`` or ``pausing``)."""
    lease_until: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.hyperparameters, dict):  # a row's JSON, read back by ``record``
            object.__setattr__(self, "hyperparameters", Hyperparameters.from_dict(self.hyperparameters))

    @property
    def method_type(self) -> MethodType:
        return MethodType(self.method["type"])

    def method_with_hyperparameters(self) -> dict[str, Any]:
        """``method`` as OpenAI shows it: ``{"type": T, T: {"hyperparameters": {...}}}``."""
        kind = self.method_type.value
        settings = self.method.get(kind) or {}  # a reinforcement job's grader and response format
        return {**self.method, kind: {**settings, "hyperparameters": self.hyperparameters.to_dict()}}


@dataclass(frozen=True)
class EventRecord:
    id: str
    job_id: str
    created_at: int
    level: str
    type: str
    message: str
    data: dict[str, Any] | None


@dataclass(frozen=True)
class CheckpointRecord:
    id: str
    job_id: str
    created_at: int
    step_number: int
    metrics: dict[str, float]
    adapter_path: str


@dataclass(frozen=True)
class FileRecord:
    id: str
    owner: str
    filename: str
    purpose: str
    size_bytes: int
    created_at: int
    expires_at: int | None
    status: str
    status_details: str | None
    checksum: str | None = None
    validation: dict[str, Any] | None = None


@dataclass(frozen=True)
class ModelRecord:
    """A fine-tuned model: a LoRA adapter on a base model, owned by one owner."""

    id: str
    owner: str
    created: int
    base_model: str
    adapter_path: str
    job_id: str | None


@dataclass(frozen=True)
class BaseModelRecord:
    """A base model registered with ``selftune models add``; visible to every owner."""

    name: str
    source: str
    path: str
    gguf_file: str | None
    created: int
    qlora: bool = False
    """Its jobs train on a 4-bit base (``selftune models add --qlora``)."""
    sha256: str | None = None
    """The weights' SHA-256 (of the GGUF file, or of a folder's files listed with theirs)."""
    stored_key: str | None = None
    """Where the weights' bytes are in a remote store, for machines that do not have them."""


@dataclass(frozen=True)
class WorkerRecord:
    """A training worker that is running (or was, until ``last_seen``)."""

    id: str
    host: str
    device: str
    gpus: int
    memory_bytes: int
    slots: int
    started_at: int
    last_seen: float
    jobs: list[str]
    nproc: int = 1
    """Processes it gives each job (torchrun's ``--nproc-per-node``)."""
    group_name: str | None = None
    """The group it trains jobs with on ``nnodes`` machines (``selftune.groups``), if any."""
    nnodes: int = 1


R = TypeVar("R")


def record(cls: type[R], row: Any) -> R:
    """A row as its frozen record (columns the record does not name, like ``seq``, are left out)."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in row._mapping.items() if k in names})


def row_values(rec: Any) -> dict[str, Any]:
    """A record as the values of its row (typed values back to their JSON)."""
    return {k: v.to_dict() if isinstance(v, Hyperparameters) else v for k, v in rec.__dict__.items()}
