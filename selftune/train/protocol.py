"""The contract between a worker and a training recipe. No torch here: the worker imports this, not the recipe.

A worker runs a recipe as a child process on one job folder and talks to it through files only, so
a recipe can be replaced (DPO beside LoRA SFT), and a worker can run on another machine that shares
``SELFTUNE_HOME``. Whatever keeps these rules is a recipe:

1. **Input.** ``JOB_DIR/job.json`` is a ``TrainConfig`` (``save_config`` / ``load_config``). The
   worker writes it before each start; the data files it names were validated at upload, so the
   recipe renders them and does not validate them again.
2. **Command.** ``recipe_command(job_dir, method, launch)``: ``python -m selftune.train.lora
   JOB_DIR/job.json`` (one recipe trains every method: ``TrainConfig.method`` picks the objective),
   or, on more than one process (``Launch``), the same under torchrun through
   ``python -m selftune.train.launch``, which keeps every rule below: only the main rank writes
   events and files, and the launcher exits with the main rank's status.
3. **Events.** The recipe appends one JSON object per line to ``JOB_DIR/events.jsonl`` and flushes
   each line: ``{"type", "level", "message", "data", "time"}``. The types are the records below
   (``Message``, ``Metrics``, ``Checkpoint``, ``Paused``, ``Done``, ``Error``); ``EventWriter``
   writes them and ``EventReader`` reads them back, whole lines only, from where it left off. The
   worker relays them as job events in OpenAI's wording, which the recipe chooses.
4. **Pause.** The worker asks for a pause by creating ``JOB_DIR/pause``. The recipe saves
   everything it needs to continue in ``JOB_DIR/state.pt``, emits ``Paused`` and exits ``PAUSED``.
   Started again with the same ``job.json`` and ``resume`` true, it continues exactly.
5. **Exit status** (``Exit``): ``DONE`` after a ``Done`` event; ``DATA_ERROR`` after an ``Error``
   event (the recipe raised one of ``selftune.errors``, whose ``code`` becomes the job's
   ``error.code``); ``PAUSED``; anything else is a crash, reported with the tail of
   ``JOB_DIR/train.log`` (the recipe's stdout and stderr).
6. **Outputs** (``JobDir``): ``adapter/`` (the final adapter), ``checkpoints/step-N/`` (named in
   ``Checkpoint`` events, with the list still kept), ``metrics.csv`` (OpenAI's result-file
   columns), and optionally ``eval.json`` / ``eval.html``, which become result files.
7. **Orphans.** A recipe whose parent worker is gone stops: a killed worker never leaves training running.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from enum import IntEnum
from pathlib import Path
from typing import Any, ClassVar, Literal

from selftune.atomic import write_atomic
from selftune.methods import TRAINED, Hyperparameters, MethodType

Level = Literal["info", "warn", "error"]

RECIPES: dict[MethodType, str] = dict.fromkeys(TRAINED, "selftune.train.lora")  # method.type -> its recipe


class Exit(IntEnum):
    DONE = 0
    FAILED = 1
    DATA_ERROR = 2
    PAUSED = 3


@dataclass(frozen=True)
class JobDir:
    """The files of one job's folder, by their names in the protocol."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "job.json"

    @property
    def events(self) -> Path:
        return self.root / "events.jsonl"

    @property
    def state(self) -> Path:
        """Everything needed to continue exactly: adapter, optimizer, scheduler, RNG, step, metrics so far."""
        return self.root / "state.pt"

    @property
    def pause(self) -> Path:
        return self.root / "pause"

    @property
    def log(self) -> Path:
        return self.root / "train.log"

    @property
    def adapter(self) -> Path:
        return self.root / "adapter"

    @property
    def exit_status(self) -> Path:
        """Under torchrun, the main rank's exit status (``train.launch`` exits with it)."""
        return self.root / "exit-status"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, step: int) -> Path:
        """The adapter saved at the end of the epoch that ended at ``step``."""
        return self.checkpoints / f"step-{step}"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def eval_json(self) -> Path:
        return self.root / "eval.json"

    @property
    def eval_html(self) -> Path:
        return self.root / "eval.html"


# --- the recipe's input -----------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """What the recipe needs, as ``job.json``."""

    base_model_dir: str
    """Folder with the base model's safetensors and tokenizer."""
    train_file: str
    output_dir: str
    """The job folder (``JobDir``)."""
    valid_file: str | None = None
    method: MethodType = MethodType.SUPERVISED
    """``supervised`` (next-token loss on the assistant messages) or ``dpo`` (preference pairs)."""
    hyperparameters: Hyperparameters = field(default_factory=lambda: Hyperparameters(3, 1, 1.0))
    """The job's, as resolved at its creation (``selftune.methods``)."""
    seed: int = 0
    max_seq_len: int = 1024
    """Longer examples are truncated from the end (and reported before training starts)."""
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """All linear layers of a Llama-style block."""
    warmup_ratio: float = 0.05
    eval_every: int = 0
    """valid_loss on one validation batch every N steps (0: about 10 per run); full_valid_loss each epoch."""
    keep_checkpoints: int = 3
    precision: str = "auto"
    """``auto`` (bf16 autocast where the CPU or GPU supports it), ``bf16`` or ``fp32``."""
    qlora: bool = False
    """Train on a 4-bit base (the model was registered with ``--qlora``); on CUDA the memory plan
    also turns to one when nothing else fits."""
    init_adapter: str | None = None
    """Continue training from this adapter (an ``ft:`` model as the job's base)."""
    resume: bool = True
    """Continue from ``output_dir/state.pt`` when it exists (after a pause or a crash)."""
    eval_examples: int = 0
    """After training, compare base and fine-tuned answers on up to this many validation examples."""
    quality_prompts: int = 16
    """The quality guard asks at least this many held-out prompts (0: neither the guard nor the
    evaluation, as in the speed probe, whose model is thrown away)."""
    model_name: str = "fine-tuned"
    base_model_name: str = "base"
    """Names for the two models in the evaluation report."""
    train_name: str | None = None
    valid_name: str | None = None
    """The files' names as uploaded, for messages (the paths above are storage paths)."""
    wandb: dict[str, Any] | None = None
    """The W&B run to log to (``selftune.integrations.wandb_run``: project, name, entity, tags, id)."""
    # Reinforcement only: the grader as checked, the response format, folders python graders never see, the base's
    # GGUF llama.cpp samples from on a CPU (None: in-process), its judges as resolved (``train.judging.JudgeModel``).
    grader: dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    hidden_dirs: list[str] = field(default_factory=list)
    sampling_gguf: str | None = None
    judges: list[dict[str, Any]] = field(default_factory=list)

    @property
    def job_dir(self) -> JobDir:
        return JobDir(Path(self.output_dir))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "hyperparameters": self.hyperparameters.to_dict()}


def save_config(cfg: TrainConfig) -> Path:
    """Write ``job.json`` into the job folder (temporary file, then rename)."""
    path = cfg.job_dir.config
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(cfg.to_dict(), indent=2))
    return path


def load_config(path: str | Path) -> TrainConfig:
    """Read ``job.json``; unknown keys are an error, so a mismatched worker and recipe fail loudly."""
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{path}: unknown TrainConfig field(s) {', '.join(unknown)}; is the recipe older?")
    if "hyperparameters" in raw:
        raw["hyperparameters"] = Hyperparameters.from_dict(raw["hyperparameters"])
    raw["method"] = MethodType(raw.get("method", MethodType.SUPERVISED))
    return TrainConfig(**raw)


@dataclass(frozen=True)
class Launch:
    """The processes a job trains on: ``nproc_per_node`` on each of ``nnodes`` machines, which meet
    at ``rdzv_endpoint`` (hosted by the head, the worker that claimed the job; the rest: members)."""

    nproc_per_node: int = 1
    nnodes: int = 1
    rdzv_endpoint: str = ""
    rdzv_id: str = ""
    member: bool = False

    @property
    def distributed(self) -> bool:
        return self.nproc_per_node > 1 or self.nnodes > 1


def recipe_command(config: Path, method: MethodType = MethodType.SUPERVISED, launch: Launch = Launch()) -> list[str]:
    """The command line that runs the recipe for ``method`` on a saved ``job.json``: the recipe
    itself on one process, ``selftune.train.launch`` (torchrun) on more."""
    if not launch.distributed:
        return [sys.executable, "-m", RECIPES[method], str(config)]
    command = [sys.executable, "-m", "selftune.train.launch", "--recipe", RECIPES[method]]
    command += ["--nproc-per-node", str(launch.nproc_per_node), "--nnodes", str(launch.nnodes)]
    if launch.nnodes > 1:
        command += ["--rdzv-endpoint", launch.rdzv_endpoint, "--rdzv-id", launch.rdzv_id]
    return [*command, *(["--member"] if launch.member else []), str(config)]


# --- events -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecipeEvent:
    """One line of ``events.jsonl``. Subclasses name their ``type`` and carry typed ``data``."""

    TYPE: ClassVar[str] = ""
    message: str
    level: Level = "info"
    time: float = 0.0

    def data(self) -> dict[str, Any]:
        skip = {"message", "level", "time"}
        return {k: v for k, v in asdict(self).items() if k not in skip}

    def to_line(self) -> str:
        line = {
            "type": self.TYPE,
            "level": self.level,
            "message": self.message,
            "data": self.data(),
            "time": self.time or time.time(),
        }
        return json.dumps(line)


@dataclass(frozen=True)
class Message(RecipeEvent):
    """Free text for the job's events (started, resumed, warnings, the evaluation summary)."""

    TYPE: ClassVar[str] = "message"
    extra: dict[str, Any] = field(default_factory=dict)

    def data(self) -> dict[str, Any]:
        return dict(self.extra)


@dataclass(frozen=True)
class Metrics(RecipeEvent):
    """One optimizer step. ``trained_tokens`` is the running total, every token of every example seen."""

    TYPE: ClassVar[str] = "metrics"
    step: int = 0
    total_steps: int = 0
    trained_tokens: int = 0
    train_loss: float = 0.0
    train_mean_token_accuracy: float | None = None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None
    train_reward_accuracy: float | None = None
    """DPO: the share of pairs whose preferred output the model rates above the other (implicit reward)."""
    train_reward_margin: float | None = None
    """DPO: the mean of preferred minus non-preferred reward, in units of beta times log-probability."""
    valid_reward_accuracy: float | None = None
    valid_reward_margin: float | None = None
    # Reinforcement (``train.grpo`` and docs/reinforcement.md say what each is), as OpenAI's RFT names them.
    train_reward_mean: float | None = None
    valid_reward_mean: float | None = None
    train_reward_std: float | None = None
    train_kl: float | None = None
    train_answer_tokens: float | None = None
    valid_answer_tokens: float | None = None
    train_ended: float | None = None
    valid_ended: float | None = None
    train_grader_error_rate: float | None = None
    valid_grader_error_rate: float | None = None
    train_sampling_seconds: float | None = None
    train_grading_seconds: float | None = None
    train_training_seconds: float | None = None

    def data(self) -> dict[str, Any]:
        return {k: v for k, v in super().data().items() if v is not None}

    def public(self) -> dict[str, Any]:
        """The data of the job's ``metrics`` event, as OpenAI's (without the running token count)."""
        return {k: v for k, v in self.data().items() if k != "trained_tokens"}


@dataclass(frozen=True)
class Checkpoint(RecipeEvent):
    """An epoch's adapter at ``path``; ``kept`` lists every checkpoint folder still on disk."""

    TYPE: ClassVar[str] = "checkpoint"
    step: int = 0
    epoch: int = 0
    path: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    kept: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Paused(RecipeEvent):
    TYPE: ClassVar[str] = "paused"
    step: int = 0


@dataclass(frozen=True)
class Done(RecipeEvent):
    """The last event of a finished run, with what it measured."""

    TYPE: ClassVar[str] = "done"
    trained_tokens: int = 0
    steps: int = 0
    seconds: float = 0.0
    tokens_per_second: float | None = None
    """Training speed after warm-up (model loading and the first step excluded)."""
    loop_seconds: float = 0.0
    loop_tokens: int = 0
    """The whole loop of this run, first step included (benchmarks compare these with peers')."""
    peak_rss_mb: float = 0.0
    """The main process's."""
    world_size: int = 1
    """The processes that trained it (``tokens_per_second`` is all of theirs together)."""
    quality: dict[str, Any] | None = None
    """The quality guard's finding (``selftune.eval.quality.Quality.to_dict``), the job's ``quality``."""


@dataclass(frozen=True)
class Error(RecipeEvent):
    TYPE: ClassVar[str] = "error"
    level: Level = "error"
    code: str = "training_failed"


EVENT_TYPES: dict[str, type[RecipeEvent]] = {c.TYPE: c for c in (Message, Metrics, Checkpoint, Paused, Done, Error)}


def parse_event(line: dict[str, Any]) -> RecipeEvent:
    """One decoded line as its record. An unknown type reads as a ``Message``, so a newer recipe's
    extra events still show up in the job's events instead of being lost."""
    data = line.get("data") or {}
    message, time_ = str(line.get("message", "")), float(line.get("time") or 0.0)
    level: Level = line.get("level") if line.get("level") in ("info", "warn", "error") else "info"  # type: ignore[assignment]
    cls = EVENT_TYPES.get(str(line.get("type")))
    if cls is None or cls is Message:
        return Message(message, level, time_, extra=data)
    known = {f.name for f in fields(cls)} - {"message", "level", "time"}
    return cls(message, level, time_, **{k: v for k, v in data.items() if k in known})


class EventWriter:
    """The recipe's side: append events, one flushed line each, so a reader follows them live."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.f = path.open("a", encoding="utf-8")

    def emit(self, event: RecipeEvent) -> None:
        self.f.write(event.to_line() + "\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()


class EventReader:
    """The worker's side: the events added since the last ``read``, whole lines only (the last line
    may still be being written). Start at ``offset`` to skip what an earlier run already relayed."""

    def __init__(self, path: Path, offset: int | None = None) -> None:
        self.path = path
        if offset is None:
            offset = path.stat().st_size if path.exists() else 0
        self.offset = offset

    def read(self) -> list[RecipeEvent]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        out = []
        for raw in chunk[:end].splitlines():
            try:
                line = json.loads(raw)
            except json.JSONDecodeError:
                continue  # a torn line from a crash mid-write; the next one is whole
            if isinstance(line, dict):
                out.append(parse_event(line))
        return out


def read_events(path: Path) -> list[RecipeEvent]:
    """Every event of a finished (or stopped) run."""
    return EventReader(path, offset=0).read()
