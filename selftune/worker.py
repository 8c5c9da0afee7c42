"""The training worker: supervises one training process per job and relays what it reports.

It polls the store for work: jobs to check (``validating_files``), jobs to train (``queued``), and
cancels and pauses of the jobs it trains. Each job trains in its own process (or processes, under
torchrun: ``--nproc-per-node``; on several machines, ``selftune.groups``), at most ``worker_slots``
at a time, so a crash or an out-of-memory kill takes down one job, never the server. The worker and
the recipe keep the contract of ``selftune.train.protocol``, and every status change goes through
``selftune.jobs``; this module never imports the recipe, nor torch.

``selftune serve`` runs a worker on a thread; ``selftune worker`` runs one alone, on any machine
that shares the database and ``SELFTUNE_HOME``. A job is claimed by the move that starts it, a
compare-and-set that also takes a lease (``selftune.claims``), so only one worker trains it; a
thread of the worker's own renews its leases, whatever the loop is busy with.

Nothing is ever left ``running``: a worker that disappears (SIGKILL, power loss) stops renewing its
leases, and the next worker to start on its host (which sees the process is gone), or any live one
once the lease lapses by the database's clock (``SELFTUNE_LEASE_SECONDS``), puts its jobs back in the
queue to continue from the last saved state, or fails them with a clear error when none was saved yet.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import IO, Any

from selftune import jobs
from selftune.atomic import remove_tree
from selftune.claims import LeaseKeeper, dead_here, holder_id
from selftune.errors import InvalidStatus, internal_error
from selftune.faults import crash_point
from selftune.groups import Groups, Rendezvous, role
from selftune.job_launch import CannotStart, log_tail, spawn, train_config
from selftune.job_objects import JobObjects
from selftune.services import Core
from selftune.statuses import JOBS, JobAction, JobStatus
from selftune.store import JobRecord
from selftune.tables import WorkerRecord
from selftune.train.protocol import (
    Checkpoint,
    Done,
    Error,
    EventReader,
    Exit,
    JobDir,
    Launch,
    Metrics,
)
from selftune.workers import STALE_LEASES, least_memory, offer

log = logging.getLogger("selftune.worker")

SHUTDOWN_GRACE_SECONDS = 20.0
"""On a clean shutdown, how long training may take to save its state before it is killed."""


@dataclass
class _Active:
    """A job this worker is training: its process, its folder, and its events read so far; for a job
    its group trains on several machines, the rendezvous (opened by this worker, or joined as a member)."""

    job: JobRecord
    proc: subprocess.Popen[bytes]
    files: JobDir
    log: IO[bytes]
    events: EventReader
    pause_requested: bool = False
    first: tuple[float, int] | None = None
    """(time, step) of the first step of this run, for the finish estimate."""
    done: Done | None = None
    error: Error | None = None
    meeting: Rendezvous | None = None
    member: bool = False


class Worker:
    def __init__(self, core: Core, *, poll_seconds: float = 0.5) -> None:
        self.core = core
        self.settings = settings = core.settings
        self.store = core.store
        self.blobs, self.catalog, self.storage = core.blobs, core.catalog, core.storage
        self.objects = JobObjects(core.storage, core.store, settings.home)
        self.offer = offer(settings)
        self.slots = self.offer.slots
        self.poll_seconds = poll_seconds
        self.jobs_dir = settings.home / "jobs"
        self.id = holder_id()
        self.lease_seconds = settings.lease_seconds
        self.leases = LeaseKeeper(core.store.claims, "jobs", self.id, self.lease_seconds)
        self.active: dict[str, _Active] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_recovery = 0.0
        self._last_seen = 0.0
        self.groups = Groups(core.store.engine)
        self._need: dict[str, int] = {}  # queued jobs looked at: the least memory their model needs
        self._told: set[str] = set()

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
        self.leases.start()
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # one bad job or a database blip must not stop the worker
                log.exception("worker tick failed")
            self._stop.wait(self.poll_seconds)
        self._shutdown()
        self.leases.stop()

    def tick(self) -> None:
        clock = time.monotonic()
        me = self.offer.record(self.id, list(self.active))
        if clock - self._last_seen > self.lease_seconds / 3:
            self._last_seen = clock
            self.store.worker_seen(me)
        if clock - self._last_recovery > self.lease_seconds / 4:
            self._last_recovery = clock
            self._recover_orphans()
        for job in self.store.jobs_in(JobStatus.VALIDATING_FILES):
            self._try(jobs.validate_files, self.store, self.blobs, job)
        for active in list(self.active.values()):
            self._follow(active)
        seen = STALE_LEASES * self.lease_seconds
        live = cache(lambda: self.store.list_workers(seen))  # read once a tick, if needed
        if len(self.active) >= self.slots or (self.offer.group and not self._group_claims(me, live())):
            return
        queued = self.store.jobs_in(JobStatus.QUEUED)
        largest = cache(lambda: max((w.memory_bytes for w in live()), default=0))  # the largest live offer
        too_big = [job.id for job in queued if not self._fits(job, largest)]
        self._need = {job.id: self._need[job.id] for job in queued if job.id in self._need}  # forget the rest
        self._told &= set(self._need)  # (a job left to a larger worker is told so once)
        while len(self.active) < self.slots:
            claimed = jobs.claim_next(self.store, self.id, self.lease_seconds, too_big)
            if claimed is None:
                break
            self._started(claimed)

    def _group_claims(self, me: WorkerRecord, live: list[WorkerRecord]) -> bool:
        """In a group, the head claims jobs while the group is whole and idle, and the others join
        them (``selftune.groups``)."""
        head, ready = role(me, live)
        if not head and (seat := self.groups.take_seat(me.group_name or "", self.id)):
            self._join(seat)
        return ready

    def _fits(self, job: JobRecord, largest: Callable[[], int]) -> bool:
        """Claim it if its model fits here, or no live worker offers more (the plan then fails it)."""
        if job.id not in self._need:
            try:
                base_dir = self.catalog.materialize(self.catalog.get_base(job.base_model))
                self._need[job.id] = least_memory(base_dir, self.offer.device)
            except Exception:  # a model that cannot be loaded: the start fails the job with the reason
                self._need[job.id] = 0
        if (need := self._need[job.id]) <= self.offer.memory_bytes:
            return True
        if largest() < need:
            return True
        if job.id not in self._told:  # once per job
            self._told.add(job.id)
            self.store.add_events(job.id, [("warn", "message", self.offer.too_small(need), {})])
        return False

    @staticmethod
    def _try(move: Callable[..., Any], *args: Any) -> bool:
        """Make a move of ``selftune.jobs``; False when the job had moved on (cancelled meanwhile,
        or claimed by another worker), which for a worker is not an error."""
        try:
            move(*args)
        except InvalidStatus as e:
            log.info("%s", e.message)
            return False
        return True

    def _fail(self, job: JobRecord, code: str, message: str, param: str | None = None) -> bool:
        return self._try(jobs.fail, self.store, job, code, message, param)

    # --- queued -> running ------------------------------------------------------------------------

    def _started(self, job: JobRecord) -> None:
        """A job this worker has just claimed: launch its training, or fail it with the reason."""
        self.leases.hold(job.id)
        try:
            self._launch(job)
        except Exception as e:  # after the claim, never leave the job running without a process
            self.leases.drop(job.id)
            self._fail(job, "training_failed", internal_error(e, log, f"starting {job.id} failed").message)

    def _launch(self, job: JobRecord) -> None:
        files = JobDir(self.jobs_dir / job.id)
        files.root.mkdir(parents=True, exist_ok=True)
        files.pause.unlink(missing_ok=True)
        resumed = self.objects.fetch(job.id, files)
        try:
            cfg = train_config(self.core, job, files)
        except CannotStart as e:
            self.leases.drop(job.id)
            self._fail(job, e.code, e.message)
            return
        reader = EventReader(files.events)  # from the end: an earlier run's events were relayed already
        if resumed is not None:
            where = f"its checkpoint at step {resumed}, fetched from the store ({self.storage.url})"
            self.store.add_events(
                job.id, [("info", "message", f"Worker {self.offer.host} continues this job from {where}", {})]
            )
        meeting = None
        if (o := self.offer).group:  # the group's other machines join at this rendezvous (selftune.groups)
            meeting = self.groups.open(job.id, o.group, o.address, o.nnodes, o.nproc)
        launch = meeting.launch(member=False) if meeting else Launch(o.nproc)
        proc, train_log = spawn(self.core, cfg, launch, self.offer)
        self.active[job.id] = _Active(job, proc, files, train_log, reader, meeting=meeting)
        log.info("training %s (pid %d) in %s", job.id, proc.pid, files.root)

    def _join(self, seat: Rendezvous) -> None:
        """Train a job with its group's head, as a member: in a folder of this worker's own, reporting
        nothing (the head's main rank does)."""
        job = self.store.get_job(None, seat.job_id)
        files = JobDir(self.jobs_dir / f"{job.id}-member")
        files.root.mkdir(parents=True, exist_ok=True)
        try:
            cfg = train_config(self.core, job, files)
        except CannotStart as e:  # the head's ranks wait for this machine: the rendezvous times out
            log.error("cannot join %s: %s", job.id, e.message)
            return
        proc, train_log = spawn(self.core, cfg, seat.launch(member=True), self.offer)
        self.active[job.id] = _Active(job, proc, files, train_log, EventReader(files.events), meeting=seat, member=True)
        log.info("joining %s (pid %d) of group %s at %s", job.id, proc.pid, seat.group_name, seat.endpoint)

    # --- running: relay events, obey cancel and pause, finish -----------------------------------

    def _follow(self, a: _Active) -> None:
        exited = a.proc.poll() is not None  # read before draining, so no event is left behind
        if a.member:  # its head follows the job: a member only stops when the attempt it joined is over
            assert a.meeting is not None
            now = self.groups.get(a.job.id)
            if exited or now is None or now.rdzv_id != a.meeting.rdzv_id:
                self._kill(a)
                self._forget(a)
            return
        current = self.store.get_job(None, a.job.id)
        if current.status not in JOBS.claimed or current.claimed_by != self.id:
            # Cancelled, or (after a long stall) taken over by another worker: stop at once.
            self._kill(a)
            self._forget(a)
            if current.status == JobStatus.CANCELLED:
                self._discard(a.files)
            return
        self._relay(a)
        if current.status == JobStatus.PAUSING and not a.pause_requested:
            a.files.pause.touch()
            a.pause_requested = True
        if exited:
            self._forget(a)
            self._finish(a, a.proc.returncode)

    def _relay(self, a: _Active) -> None:
        values: dict[str, Any] = {}
        events: list[tuple[str, str, str, dict[str, Any] | None]] = []
        for e in a.events.read():
            if isinstance(e, Metrics):
                values["trained_tokens"] = e.trained_tokens
                values["estimated_finish"] = self._estimate(a, e.time or time.time(), e.step, e.total_steps)
                events.append((e.level, "metrics", e.message, e.public()))
            elif isinstance(e, Checkpoint):
                key, kept = self.objects.checkpoint(a.job.id, e, a.files)
                jobs.record_checkpoint(self.store, a.job, e.step, e.metrics, key, kept)
                events.append((e.level, "message", e.message, {}))
            elif isinstance(e, Done):
                a.done = e
            elif isinstance(e, Error):
                a.error = e
            else:  # Message, Paused
                events.append((e.level, "message", e.message, {}))
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
        """The job's last move after its process ended; if even that fails (a full disk while its
        results are copied, say), the job fails with the reason instead of staying ``running``."""
        try:
            self._conclude(a, rc)
        except Exception as e:
            why = internal_error(e, log, f"finishing {a.job.id} failed").message
            self._fail(self.store.get_job(None, a.job.id), "training_failed", why)

    def _conclude(self, a: _Active, rc: int) -> None:
        job = self.store.get_job(None, a.job.id)
        if rc == Exit.DONE and a.done is not None:
            crash_point("job.finished")
            self.objects.put(a.files.adapter)  # any server serves the model from the store
            if self._try(jobs.succeed, self.store, self.blobs, self.settings.home, job, a.files, a.done, self.catalog):
                self.objects.delete(a.files.state)  # only needed to continue
        elif rc == Exit.PAUSED:
            self.objects.put(a.files.state)  # resumed, it may continue on any worker
            self._try(jobs.apply, self.store, job, JobAction.PAUSED)
        elif rc == Exit.DATA_ERROR and a.error is not None:
            self._fail(job, a.error.code, a.error.message, "training_file")
        else:
            tail = log_tail(a.files.log)
            self._fail(
                job,
                "training_failed",
                f"The training process exited with status {rc}{a.meeting.note() if a.meeting else ''}. "
                f"Last lines of its log ({a.files.log}):\n" + tail,
            )

    def _kill(self, a: _Active) -> None:
        if a.proc.poll() is None:
            a.proc.kill()
            a.proc.wait()

    def _forget(self, a: _Active) -> None:
        self.active.pop(a.job.id, None)
        a.log.close()
        if a.member:
            return
        self.leases.drop(a.job.id)
        if a.meeting is not None:  # the attempt is over: members stop
            self.groups.close(a.meeting.rdzv_id)

    def _discard(self, files: JobDir) -> None:
        """A cancelled job keeps its log and events, not its weights (here or in the store)."""
        remove_tree(files.checkpoints, files.root)
        remove_tree(files.adapter, files.root)
        files.state.unlink(missing_ok=True)
        self.objects.delete(files.root)

    # --- shutdown and recovery --------------------------------------------------------------------

    def _shutdown(self) -> None:
        """Ask every job to save its state, give them a moment, and put them back in the queue."""
        for a in list(self.active.values()):
            if a.member:  # the job's head is the one that saves and requeues it
                self._kill(a)
                self._forget(a)
            else:
                a.files.pause.touch()
        deadline = time.monotonic() + SHUTDOWN_GRACE_SECONDS
        for a in list(self.active.values()):
            try:
                a.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._kill(a)
            self._relay(a)
            self._forget(a)
            a.files.pause.unlink(missing_ok=True)
            if a.proc.returncode in (Exit.DONE, Exit.DATA_ERROR):  # it finished in the meantime
                self._finish(a, a.proc.returncode)
            else:
                self.objects.put(a.files.state)  # saved just now: any worker continues
                self._requeue(a.job, "The worker stopped; the job continues from its saved state when one starts")
        self.store.worker_gone(self.id)
        log.info("worker %s stopped", self.id)

    def _requeue(self, job: JobRecord, why: str) -> None:
        """Continue from the saved state if there is one; otherwise fail with a clear error."""
        current = self.store.get_job(None, job.id)
        if current.status not in JOBS.claimed:
            return
        if self.objects.has_state(JobDir(self.jobs_dir / job.id)):
            self._try(jobs.apply, self.store, current, JobAction.REQUEUE, None, [("warn", why)])
            return
        self._fail(
            current,
            "training_interrupted",
            "The worker training this job stopped before the first checkpoint was saved, so there is no state "
            "to resume from. Create the job again.",
        )

    def _recover_orphans(self) -> None:
        """Take back jobs whose worker is gone: dead on this host, or its lease lapsed."""
        lapsed = {job.id for job in self.store.claims.lapsed_jobs(JOBS.claimed)}
        for job in self.store.jobs_in(*JOBS.claimed):
            if job.claimed_by == self.id:
                continue
            if dead_here(job.claimed_by, self.id) or job.id in lapsed:
                log.warning("recovering %s from worker %s", job.id, job.claimed_by)
                self._requeue(
                    job, "The worker training this job stopped unexpectedly; it resumes from its last checkpoint"
                )


def run_forever(worker: Worker) -> None:
    """``selftune worker``: run in the foreground until SIGINT or SIGTERM, then stop cleanly."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: worker.request_stop())
    worker.run()
