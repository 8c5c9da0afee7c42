"""Settings: one object, read from ``SELFTUNE_*`` environment variables (or passed explicitly).

Nothing reads the environment anywhere else. ``create_app(settings)`` and the CLI take a
``Settings``; tests build their own with ``Settings(home=tmp_path, ...)``.
"""

from __future__ import annotations

import hashlib
import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from selftune.errors import InvalidRequest

DEFAULT_MODEL = "SmolLM2-135M-Instruct"

# OpenAI model names that the tutorials use, served by the default base model so that their code
# runs as written. Responses always report the real model, never the alias.
MIGRATION_ALIASES = (
    "gpt-3.5-turbo",
    "gpt-3.5-turbo-0613",
    "gpt-3.5-turbo-1106",
    "gpt-3.5-turbo-0125",
    "gpt-4o-mini",
    "gpt-4o-mini-2024-07-18",
    "gpt-4o",
    "gpt-4o-2024-08-06",
    "gpt-4.1-mini",
    "gpt-4.1-mini-2025-04-14",
    "gpt-4.1-nano",
    "gpt-4.1",
    "babbage-002",
    "davinci-002",
)

LOCAL_OWNER = "local"


class Settings(BaseSettings):
    """Every knob, with its environment variable ``SELFTUNE_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="SELFTUNE_", extra="ignore")

    home: Path = Field(default_factory=lambda: Path("~/.selftune").expanduser())
    """Data directory: database, uploaded files, converted models, adapters."""

    host: str = "127.0.0.1"
    """Address to listen on. Without API keys only loopback addresses are allowed."""

    port: int = 8000

    api_keys: str = ""
    """Comma-separated ``KEY`` or ``KEY:OWNER`` entries. Empty means local mode (no auth, loopback only)."""

    database_url: str | None = None
    """SQLAlchemy URL, e.g. ``postgresql+psycopg://user@127.0.0.1:5432/selftune``. Default: SQLite in home."""

    storage_url: str | None = None
    """Where files, adapters, checkpoints, resume state and exports live (``selftune.storage``): unset,
    in ``home`` itself; ``s3://bucket/prefix``, in an S3-compatible store shared by every server and
    worker, with endpoint and credentials from ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY`` and ``AWS_REGION``. Needs PostgreSQL (``database_url``)."""

    cache_bytes: int = Field(default=20 * 1024**3, ge=0)
    """With a remote store: how much this machine keeps of what it fetched from it (``home/cache``;
    least recently used out)."""

    worker_memory_bytes: int = Field(default=0, ge=0)
    """Memory a worker offers its jobs (GPU memory on CUDA, RAM on a CPU); 0 measures the device. A
    worker claims only jobs whose memory plan fits it (``selftune.train.memory``)."""

    max_upload_bytes: int = 512 * 1024 * 1024
    """Largest accepted upload (OpenAI's limit is 512 MB)."""

    max_request_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    """Largest body of any other request (chat, responses, a job's creation): refused with a 413
    before it is read or parsed, whether or not it declares its length."""

    fine_tune_downloads: bool = True
    """Serve the content of ``purpose=fine-tune`` files. Off, downloads are refused as OpenAI refuses
    them (400, "Not allowed to download files of purpose: fine-tune"); result files stay downloadable."""

    default_model: str = DEFAULT_MODEL
    """Base model that migration aliases (``gpt-3.5-turbo``...) point at, and that ``serve`` preloads."""

    model_aliases: str = ""
    """Extra aliases as ``alias=model,alias2=model2``; they override the built-in migration aliases."""

    migration_aliases: bool = True
    """Map OpenAI model names (``gpt-3.5-turbo``, ``gpt-4o-mini-2024-07-18``...) to the default model."""

    preload: bool = True
    """Load the default model at startup, so the first request does not wait for it."""

    max_loaded_models: int = 2
    """How many base models the engine keeps in memory at once (least recently used is evicted)."""

    default_max_tokens: int = 1024
    """Completion length when a request sets neither ``max_tokens`` nor ``max_completion_tokens``."""

    batch_concurrency: int = Field(default=2, ge=1)
    """Lines of a batch in the engine at once: the rest of its batch is left to interactive requests."""

    eval_concurrency: int = Field(default=4, ge=1)
    """Items of an eval run sampled and graded at once (``selftune eval`` asks 4 at once too): the
    engine decodes them together, and they give way to interactive requests as a batch's lines do."""

    batch_yield_seconds: float = Field(default=5.0, ge=0)
    """How long a batch line waits, at most, for interactive requests to stop generating before it
    starts (``serving.admission``): chat goes first, and a batch still moves under steady chat."""

    export_concurrency: int = Field(default=2, ge=1)
    """Exports one server builds at once, each in its own process (the rest wait, ``running``, for a slot)."""

    batch_window_seconds: int | None = Field(default=None, ge=1)
    """How long a batch has before it expires, instead of its ``completion_window`` (``24h``, the only
    window the API accepts, as OpenAI's does): a large batch on a slow machine may need longer. The
    lines not answered by then go to the batch's error file as ``batch_expired``."""

    wandb_projects: str = ""
    """With API keys: the W&B projects (comma-separated, ``*`` for any) a job's integration may log
    to. The runs use this server's W&B credentials, so none is allowed unless listed; in local mode
    (one owner) any project is."""

    worker: bool = True
    """Run the training worker inside ``selftune serve``. Turn off when ``selftune worker`` runs elsewhere."""

    train_priority: Literal["idle", "low", "normal"] = "idle"
    """CPU priority of training processes: ``idle`` (Linux ``SCHED_IDLE``: training runs on the
    cycles serving leaves free, so chat stays fast while a job trains), ``low`` (nice 19) or ``normal``."""

    worker_slots: int = 1
    """Jobs one worker trains at once. One per device is fastest: two jobs on one CPU share its cores."""

    worker_nproc_per_node: int = Field(default=0, ge=0)
    """Processes a worker trains each job on (torchrun's ``--nproc-per-node``, data parallel); 0: one
    per GPU, or one on a CPU."""

    worker_nnodes: int = Field(default=1, ge=1)
    """Machines that train each job together: the workers of one ``worker_group`` (``selftune.groups``)."""

    worker_group: str = ""
    """The name of the group of ``worker_nnodes`` workers this one trains jobs with."""

    worker_address: str = ""
    """Where the other machines of its group reach this worker (empty: its host name)."""

    python_grader_timeout: float = Field(default=120.0, gt=0)
    """Wall-clock seconds a python grader may run (OpenAI's limit: 2 minutes)."""

    max_python_graders: int = Field(default=4, ge=1)
    """Python graders a server runs at once (each a sandboxed process, up to its time limit). Past
    it, ``/graders/run`` answers 429 and eval runs wait for a slot."""

    max_python_graders_per_owner: int = Field(default=2, ge=1)
    """With API keys: python graders one owner runs at once, so one owner's endless loops leave the
    others their share."""

    judge_base_url: str = ""
    """An OpenAI-compatible API (``https://api.openai.com/v1``, a vLLM server, another selftune) that
    judges ``score_model`` and ``label_model`` graders whose ``model`` this server does not serve.
    Empty: only this server's models judge, and any other model is a 400."""

    judge_api_key: str = ""
    """The key sent to ``judge_base_url``."""

    sweep_seconds: float = Field(default=60.0, gt=0)
    """How often a server deletes what has outlived its time (``selftune.sweeper``)."""

    export_retention_seconds: int = Field(default=7 * 24 * 3600, ge=0)
    """How long a finished export is kept for download before it is deleted (0: until deleted by hand)."""

    temp_retention_seconds: int = Field(default=3600, ge=60)
    """How long a temporary file nobody writes to any more (what a crash or a dropped upload left) stays."""

    max_exports_per_owner: int = Field(default=2, ge=1)
    """Exports one API key's owner may have building at once; another is a 429 until one finishes."""

    max_exports_building: int = Field(default=8, ge=1)
    """Exports every owner may have building at once, together (each loads a model in float32)."""

    lease_seconds: float = Field(default=60.0, ge=1.0)
    """How long a claim on background work lasts unless renewed (a worker's on a job, a server's on a
    batch or an export), measured on the database's clock. A process renews its leases every third of
    this; once one lapses, another process takes the work over (``selftune.claims``)."""

    eval_examples: int = Field(default=32, ge=0)
    """At the end of a job with a validation file, base and fine-tuned model answer up to this many
    validation examples and the report is attached to the job (0 turns it off)."""

    max_seq_len: int = Field(default=4096, ge=16)
    """The longest training example, in tokens: the base model's context length, capped by this."""

    max_loaded_adapters: int = 8
    """Fine-tuned adapters kept loaded on their base model (least recently used is dropped)."""

    max_choices_per_request: int = Field(default=64, ge=1)
    """Completions one request may ask for (prompts x ``n``); more is a 400 that says so."""

    max_generations: int = Field(default=64, ge=1)
    """Completions in flight on this server (queued or decoding), every owner's together; beyond it
    requests get a 429 with ``Retry-After``, which the SDKs retry, instead of waiting in a queue."""

    max_generations_per_owner: int = Field(default=32, ge=1)
    """The same bound for one API key's owner (with API keys; in local mode the server's bound holds)."""

    max_tokens_in_flight: int = Field(default=262_144, ge=1)
    """Tokens the completions in flight may ask for (each one's ``max_tokens``), every owner's together."""

    max_tokens_in_flight_per_owner: int = Field(default=131_072, ge=1)
    """The same bound for one API key's owner."""

    max_batch_size: int = Field(default=8, ge=1)
    """Requests on one base model decoded together, one token each per forward pass. On a CPU a
    token costs about the same for 1 or 8 rows, so concurrent clients share the speed instead of
    queueing; 1 turns batching off."""

    engine: Literal["auto", "llamacpp", "torch"] = "auto"
    """Serving engine (``selftune.inference.engines``): ``auto`` is llama.cpp for GGUF base models on a
    CPU and PyTorch for the rest; ``llamacpp`` or ``torch`` forces one."""

    inference_threads: int = Field(default=0, ge=0)
    """CPU threads llama.cpp decodes with; 0 is one per core."""

    inference_dtype: str = "auto"
    """``auto``, ``float32`` or ``bfloat16`` for serving. ``auto`` is float32 on CPU, bfloat16 on CUDA."""

    @field_validator("home", mode="after")
    @classmethod
    def _expand_home(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    # --- derived values --------------------------------------------------------------------------

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'selftune.db'}"

    @property
    def keys(self) -> dict[str, str]:
        """API key -> owner. A key without ``:OWNER`` gets a stable owner derived from its hash."""
        out: dict[str, str] = {}
        for raw in self.api_keys.split(","):
            entry = raw.strip()
            if not entry:
                continue
            key, _, owner = entry.partition(":")
            owner = owner.strip() or "user-" + hashlib.sha256(key.encode()).hexdigest()[:8]
            if ":" in owner or "/" in owner:
                raise InvalidRequest(f"SELFTUNE_API_KEYS: owner {owner!r} may not contain ':' or '/'")
            out[key.strip()] = owner
        return out

    @property
    def local_mode(self) -> bool:
        return not self.keys

    @property
    def aliases(self) -> dict[str, str]:
        out = dict.fromkeys(MIGRATION_ALIASES, self.default_model) if self.migration_aliases else {}
        for raw in self.model_aliases.split(","):
            alias, sep, target = raw.partition("=")
            if sep and alias.strip() and target.strip():
                out[alias.strip()] = target.strip()
        return out

    def check_storage(self) -> None:
        """A store shared by machines needs a database they share: SQLite is one machine's file."""
        if self.storage_url and not self.storage_url.startswith("file:") and self.db_url.startswith("sqlite"):
            raise InvalidRequest(
                f"SELFTUNE_STORAGE_URL={self.storage_url} is for servers and workers on many machines, and they "
                "need one database they all reach: SQLite is a file on one machine. Set SELFTUNE_DATABASE_URL to "
                "PostgreSQL (postgresql+psycopg://HOST:5432/NAME), or unset SELFTUNE_STORAGE_URL.",
                param="storage_url",
            )

    def check_group(self) -> None:
        """The workers that train a job together are a group, by name."""
        if self.worker_nnodes > 1 and not self.worker_group:
            raise InvalidRequest(
                f"--nnodes {self.worker_nnodes}: the workers that train a job together need a group name; "
                "start each of them with the same --group NAME (SELFTUNE_WORKER_GROUP)",
                param="worker_group",
            )

    def check_bind(self) -> None:
        """Refuse to expose an unauthenticated server beyond this machine."""
        if self.local_mode and not _is_loopback(self.host):
            raise InvalidRequest(
                f"refusing to listen on {self.host} without API keys: anyone on the network could read "
                "your data. Set SELFTUNE_API_KEYS (e.g. 'sk-mykey:alice') or use --host 127.0.0.1.",
                param="host",
            )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
