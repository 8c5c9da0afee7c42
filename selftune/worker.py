"""The training worker: validates new jobs, trains queued ones, and reports back through the store.

Each job trains in its own process (``python -m selftune.train.lora job.json``), at most
``worker_slots`` at a time, so a crash or an out-of-memory kill takes down one job, never the
server, and the API stays responsive while a job trains. ``selftune serve`` runs a worker on a
thread; ``selftune worker`` runs one alone, on any machine that shares the database and the
``SELFTUNE_HOME`` storage.

The worker polls rather than being told: everything it needs (new jobs, cancels, pauses) is in
the database, which is also how several workers share one queue. A job is claimed with a
compare-and-set, so only one worker trains it. The recipe writes ``events.jsonl``; the worker
relays each line as a job event, with live ``trained_tokens`` and ``estimated_finish``.

Nothing is ever left ``running``: a worker that disappears (SIGKILL, power loss) stops sending
heartbeats, and the next worker to start, or any live one after ``STALE_SECONDS``, puts its jobs
back in the queue to continue from the last saved state, or fails them with a clear error when
none was saved yet.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from selftune.blobs import Blobs, write_atomic
from selftune.catalog import Catalog
from selftune.config import Settings
from selftune.data.stats import record_throughput
from selftune.data.validate import validate_file
from selftune.errors import SelftuneError
from selftune.ids import now, random_id
from selftune.jobs import MIN_EXAMPLES
from selftune.store import CheckpointRecord, FileRecord, JobRecord, ModelRecord, Store
from selftune.train.config import TrainConfig
from selftune.train.lora import DATA_ERROR, PAUSE_FILE, PAUSED, STATE_FILE

log = logging.getLogger("selftune.worker")

HEARTBEAT_SECONDS = 5.0
STALE_SECONDS = 60.0
"""A job whose worker has not reported for this long is taken over by another worker."""
SHUTDOWN_GRACE_SECONDS = 20.0
"""On a clean shutdown, how long training may take to save its state before it is killed."""


@dataclass
class _Active:
    """A job this worker is training: its process and how far its events have been relayed."""

    job: JobRecord
    proc: subprocess.Popen[bytes]
    dir: Path
    log: IO[bytes]
    offset: int = 0
    pause_requested: bool = False
    first: tuple[float, int] | None = None
    """(time, step) of the first step of this run, for the finish estimate."""
    done: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


class Worker:
    def __init__(
        self, settings: Settings, store: Store, blobs: Blobs, catalog: Catalog, *, poll_seconds: float = 0.5
    ) -> None:
        self.settings = settings
        self.store = store
        self.blobs = blobs
        self.catalog = catalog
        self.slots = max(1, settings.worker_slots)
        self.poll_seconds = poll_seconds
        self.jobs_dir = settings.home / "jobs"
        self.id = f"{socket.gethostname()}:{os.getpid()}:{random_id('', 6)}"
        self.active: dict[str, _Active] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_heartbeat = 0.0
        self._last_recovery = 0.0

    # --- running ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Run on a background thread (``selftune serve``)."""
        self._thread = threading.Thread(target=self.run, name="selftune-worker", daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the loop to finish (safe from a signal handler); ``run`` then shuts down cleanly."""
        self._stop.set()

    def stop(self) -> None:
        self.request_stop()
        if self._thread is not None:
            self._thread.join(timeout=SHUTDOWN_GRACE_SECONDS + 10)

    def run(self) -> None:
        """Poll until stopped; then hand running jobs back to the queue with their state saved."""
        log.info("worker %s started (%d slot(s))", self.id, self.slots)
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # one bad job or a database blip must not stop the worker
                log.exception("worker tick failed")
            self._stop.wait(self.poll_seconds)
        self._shutdown()

    def tick(self) -> None:
        clock = time.monotonic()
        if clock - self._last_recovery > STALE_SECONDS / 4:
            self._last_recovery = clock
            self._recover_orphans()
        for job in self.store.jobs_in("validating_files"):
            self._validate(job)
        for active in list(self.active.values()):
            self._follow(active)
        if self.active and clock - self._last_heartbeat > HEARTBEAT_SECONDS:
            self._last_heartbeat = clock
            self.store.heartbeat(self.id, list(self.active))
        if len(self.active) < self.slots:
            for job in self.store.jobs_in("queued"):
                if len(self.active) >= self.slots:
                    break
                self._start(job)

    # --- validating_files -> queued -------------------------------------------------------------

    def _validate(self, job: JobRecord) -> None:
        checks = [("training_file", job.training_file)]
        if job.validation_file:
            checks.append(("validation_file", job.validation_file))
        for param, file_id in checks:
            try:
                rec = self.store.get_file(job.owner, file_id)
            except SelftuneError:
                self._fail(job, "file_not_found", f"The {param} {file_id} was deleted before the job started.", param)
                return
            report = validate_file(self.blobs.path(rec.id), filename=rec.filename)
            if not report.ok:
                self._fail(job, "invalid_file_format", report.summary(max_lines=20), param)
                return
            if report.format == "preference":
                message = (
                    f"{rec.filename} holds preference pairs (DPO format), but this is a supervised job; "
                    "upload chat examples ({'messages': [...]}) instead."
                )
                self._fail(job, "invalid_file_format", message, param)
                return
            if param == "training_file" and report.n_examples < MIN_EXAMPLES:
                message = (
                    f"Training file has {report.n_examples} example(s), but must have at least {MIN_EXAMPLES} examples"
                )
                self._fail(job, "invalid_n_examples", message, param)
                return
        self.store.transition(
            job.id,
            ["validating_files"],
            {"status": "queued"},
            [("info", "Files validated, moving job to queued state")],
        )

    def _fail(self, job: JobRecord, code: str, message: str, param: str | None = None) -> bool:
        values = {
            "status": "failed",
            "error": {"code": code, "message": message, "param": param},
            "finished_at": now(),
            "estimated_finish": None,
            "worker_id": None,
        }
        unfinished = ["validating_files", "queued", "running", "pausing", "paused"]
        return self.store.transition(job.id, unfinished, values, [("error", message)])

    # --- queued -> running ------------------------------------------------------------------------

    def _start(self, job: JobRecord) -> None:
        claim = {"status": "running", "worker_id": self.id, "heartbeat_at": time.time(), "estimated_finish": None}
        if not self.store.transition(job.id, ["queued"], claim):
            return  # another worker took it, or it was cancelled meanwhile
        job_dir = self.jobs_dir / job.id
        job_dir.mkdir(parents=True, exist_ok=True)
        (job_dir / PAUSE_FILE).unlink(missing_ok=True)
        try:
            base_dir = self.catalog.materialize(self.catalog.get_base(job.base_model))
        except SelftuneError as e:
            self._fail(job, "model_not_available", f"The base model {job.base_model} cannot be loaded: {e.message}")
            return
        hp = job.hyperparameters
        cfg = TrainConfig(
            base_model_dir=str(base_dir),
            train_file=str(self.blobs.path(job.training_file)),
            valid_file=str(self.blobs.path(job.validation_file)) if job.validation_file else None,
            output_dir=str(job_dir),
            n_epochs=int(hp["n_epochs"]),
            batch_size=int(hp["batch_size"]),
            learning_rate_multiplier=float(hp["learning_rate_multiplier"]),
            seed=job.seed,
            init_adapter=job.init_adapter,
            eval_examples=self.settings.eval_examples,
            model_name=job.model_name,
            base_model_name=job.base_model,
        )
        write_atomic(job_dir / "job.json", json.dumps(cfg.to_dict(), indent=2))
        events_file = job_dir / "events.jsonl"
        offset = events_file.stat().st_size if events_file.exists() else 0
        train_log = (job_dir / "train.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "selftune.train.lora", str(job_dir / "job.json")],
            stdout=train_log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.active[job.id] = _Active(job, proc, job_dir, train_log, offset=offset)
        log.info("training %s (pid %d) in %s", job.id, proc.pid, job_dir)

    # --- running: relay events, obey cancel and pause, finish -----------------------------------

    def _follow(self, a: _Active) -> None:
        exited = a.proc.poll() is not None  # read before draining, so no event is left behind
        current = self.store.get_job(None, a.job.id)
        if current.status not in ("running", "pausing") or current.worker_id != self.id:
            # Cancelled, or (after a long stall) taken over by another worker: stop at once.
            self._kill(a)
            self._forget(a)
            if current.status == "cancelled":
                self._discard(a.dir)
            return
        self._relay(a)
        if current.status == "pausing" and not a.pause_requested:
            (a.dir / PAUSE_FILE).touch()
            a.pause_requested = True
        if exited:
            self._forget(a)
            self._finish(a, a.proc.returncode)

    def _relay(self, a: _Active) -> None:
        path = a.dir / "events.jsonl"
        if not path.exists():
            return
        with path.open("rb") as f:
            f.seek(a.offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1  # only whole lines; the rest is still being written
        a.offset += end
        values: dict[str, Any] = {}
        events: list[tuple[str, str, str, dict[str, Any] | None]] = []
        for raw in chunk[:end].splitlines():
            try:
                e = json.loads(raw)
            except json.JSONDecodeError:
                continue
            kind, data = e.get("type"), e.get("data") or {}
            level = e.get("level", "info")
            if kind == "metrics":
                step, total = int(data["step"]), int(data["total_steps"])
                values["trained_tokens"] = int(data.pop("trained_tokens", 0))
                values["estimated_finish"] = self._estimate(a, float(e.get("time", time.time())), step, total)
                events.append((level, "metrics", e["message"], data))
            elif kind == "checkpoint":
                ckpt = CheckpointRecord(
                    random_id("ftckpt_"), a.job.id, now(), int(data["step"]), data["metrics"], data["path"]
                )
                self.store.put_checkpoint(ckpt, keep=data.get("kept", [data["path"]]))
                events.append((level, "message", e["message"], {}))
            elif kind == "done":
                a.done = data
            elif kind == "error":
                a.error = {"code": data.get("code", "training_failed"), "message": e["message"]}
            else:  # message, paused
                events.append((level, "message", e["message"], {}))
        self.store.add_events(a.job.id, events)
        if values:
            self.store.update_job(a.job.id, values)

    def _estimate(self, a: _Active, t: float, step: int, total: int) -> int | None:
        if a.first is None:
            a.first = (t, step)
            return None
        t0, s0 = a.first
        if step <= s0:
            return None
        return int(t + (t - t0) / (step - s0) * (total - step))

    def _finish(self, a: _Active, rc: int) -> None:
        job = a.job
        if rc == 0 and a.done is not None:
            self._succeed(a)
        elif rc == PAUSED:
            self.store.transition(
                job.id, ["pausing", "running"], {"status": "paused", "estimated_finish": None, "worker_id": None}
            )
        elif rc == DATA_ERROR and a.error is not None:
            self._fail(job, a.error["code"], a.error["message"], "training_file")
        else:
            tail = _tail(a.dir / "train.log")
            self._fail(
                job,
                "training_failed",
                f"The training process exited with status {rc}. Last lines of its log ({a.dir / 'train.log'}):\n"
                + tail,
            )

    def _succeed(self, a: _Active) -> None:
        job = a.job
        results = [self._upload_result(a.dir / "metrics.csv", "step_metrics.csv", a.job.owner)]
        # The end-of-job evaluation (when the job had a validation file) rides along as result files.
        for name, target in (("eval.html", "eval_report.html"), ("eval.json", "eval_report.json")):
            if (a.dir / name).is_file():
                results.append(self._upload_result(a.dir / name, target, a.job.owner))
        ckpts, _ = self.store.list_checkpoints(job.id, limit=1000)
        created = now()
        new_models = [ModelRecord(job.model_name, job.owner, created, job.base_model, str(a.dir / "adapter"), job.id)]
        new_models += [
            ModelRecord(
                f"{job.model_name}:ckpt-step-{c.step_number}",
                job.owner,
                created,
                job.base_model,
                c.adapter_path,
                job.id,
            )
            for c in ckpts
        ]
        values = {
            "status": "succeeded",
            "fine_tuned_model": job.model_name,
            "finished_at": created,
            "trained_tokens": int((a.done or {}).get("trained_tokens", 0)),
            "result_files": [r.id for r in results],
            "estimated_finish": None,
            "worker_id": None,
        }
        events = [
            ("info", f"New fine-tuned model created: {job.model_name}"),
            ("info", "The job has successfully completed"),
        ]
        if not self.store.transition(job.id, ["running", "pausing"], values, events, new_models):
            # Cancelled in the last moment: no model is registered, and the results go too.
            for r in results:
                self.store.delete_file(job.owner, r.id)
                self.blobs.delete(r.id)
        (a.dir / STATE_FILE).unlink(missing_ok=True)  # only needed to continue; the adapters stay
        done = a.done or {}
        batch_size = int(job.hyperparameters["batch_size"])
        record_throughput(
            self.settings.home, job.base_model, done.get("tokens_per_second"), batch_size, f"job {job.id}"
        )

    def _upload_result(self, path: Path, filename: str, owner: str) -> FileRecord:
        with path.open("rb") as src:
            tmp, size = self.blobs.copy_to_temp(src, self.settings.max_upload_bytes)
        rec = FileRecord(
            id=random_id("file-"),
            owner=owner,
            filename=filename,
            purpose="fine-tune-results",
            size_bytes=size,
            created_at=now(),
            expires_at=None,
            status="processed",
            status_details=None,
        )
        self.blobs.commit(tmp, rec.id)
        self.store.insert_file(rec)
        return rec

    def _kill(self, a: _Active) -> None:
        if a.proc.poll() is None:
            a.proc.kill()
            a.proc.wait()

    def _forget(self, a: _Active) -> None:
        self.active.pop(a.job.id, None)
        a.log.close()

    @staticmethod
    def _discard(job_dir: Path) -> None:
        """A cancelled job keeps its log and events, not its weights."""
        shutil.rmtree(job_dir / "checkpoints", ignore_errors=True)
        shutil.rmtree(job_dir / "adapter", ignore_errors=True)
        (job_dir / STATE_FILE).unlink(missing_ok=True)

    # --- shutdown and recovery --------------------------------------------------------------------

    def _shutdown(self) -> None:
        """Ask every job to save its state, give them a moment, and put them back in the queue."""
        for a in self.active.values():
            (a.dir / PAUSE_FILE).touch()
        deadline = time.monotonic() + SHUTDOWN_GRACE_SECONDS
        for a in list(self.active.values()):
            try:
                a.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._kill(a)
            self._relay(a)
            self._forget(a)
            (a.dir / PAUSE_FILE).unlink(missing_ok=True)
            if a.proc.returncode in (0, DATA_ERROR):  # it finished in the meantime
                self._finish(a, a.proc.returncode)
            else:
                self._requeue(a.job, "The worker stopped; the job continues from its saved state when one starts")
        log.info("worker %s stopped", self.id)

    def _requeue(self, job: JobRecord, why: str) -> None:
        """Continue from the saved state if there is one; otherwise fail with a clear error."""
        current = self.store.get_job(None, job.id)
        if current.status not in ("running", "pausing"):
            return
        if (self.jobs_dir / job.id / STATE_FILE).is_file():
            target = "paused" if current.status == "pausing" else "queued"
            self.store.transition(
                job.id,
                [current.status],
                {"status": target, "worker_id": None, "estimated_finish": None},
                [("warn", why)],
            )
            return
        self._fail(
            job,
            "training_interrupted",
            "The worker training this job stopped before the first checkpoint was saved, so there is no state "
            "to resume from. Create the job again.",
        )

    def _recover_orphans(self) -> None:
        """Take back jobs whose worker is gone: dead on this host, or silent for ``STALE_SECONDS``."""
        host, pid = socket.gethostname(), os.getpid()
        for job in self.store.jobs_in("running", "pausing"):
            if job.worker_id == self.id:
                continue
            w_host, _, rest = (job.worker_id or "").partition(":")
            w_pid = int(rest.partition(":")[0] or 0)
            dead_here = w_host == host and (w_pid == pid or not _alive(w_pid))
            silent = time.time() - (job.heartbeat_at or 0) > STALE_SECONDS
            if dead_here or silent:
                log.warning("recovering %s from worker %s", job.id, job.worker_id)
                self._requeue(
                    job, "The worker training this job stopped unexpectedly; it resumes from its last checkpoint"
                )


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def run_forever(worker: Worker) -> None:
    """``selftune worker``: run in the foreground until SIGINT or SIGTERM, then stop cleanly."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: worker.request_stop())
    worker.run()
