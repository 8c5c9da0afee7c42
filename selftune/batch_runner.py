"""Runs batches in the background of a server: validate, answer every line, write the files.

Each server's runner claims one batch at a time, oldest first (``background.ObjectRunner``, with
``selftune.claims``: a lease on the database's clock that a thread renews), so N servers on one
database answer each batch once, and a batch whose server died is taken over by another once its
lease lapses. At most
``SELFTUNE_BATCH_CONCURRENCY`` of its lines are in the engine at once, so interactive requests
always find room in the engine's batch beside them. Each line goes through the serving layer's
function for its endpoint (``chat``, ``complete``, ``respond``), the routes' own, with the batch
owner's models and limits. Every move follows ``statuses.BATCHES``.

Progress lives in two files under ``SELFTUNE_HOME/batches/<id>/``, appended one fsynced line per
answered request: ``output.jsonl`` (status 200) and ``errors.jsonl`` (everything else). A runner
that takes a batch over (after a restart, or from a server that died; servers share
``SELFTUNE_HOME``) reads the ``custom_id``s already there (dropping a half-written last line) and
answers only the rest, so no line is answered twice in the results. At the end both files become
``purpose=batch_output`` files (``output_file_id``, ``error_file_id``).

A batch past its ``expires_at`` takes no more lines (the ones in the engine finish); as OpenAI's
does, it ends ``expired`` with every line not answered in its error file as ``batch_expired``.

Nothing stops the runner: a line that is not JSON (or is JSON past ``selftune.safejson``'s bounds)
is that line's error (``batch_files``), a line the server is too busy for (429) waits its turn, and a
batch that raises what nothing expects fails with the reason while the next one runs. Its file and
database work runs off the event loop, so requests are answered meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Generator, Iterator
from contextlib import suppress
from itertools import islice
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from selftune.background import ObjectRunner
from selftune.batch_files import append, check_line, encode, progress, read_lines, result_line
from selftune.errors import InvalidRequest, InvalidStatus, RateLimited, SelftuneError, internal_error
from selftune.faults import crash_point
from selftune.files import register_result
from selftune.ids import now, random_id
from selftune.schemas.batches import Batch, BatchError, BatchErrors, RequestCounts
from selftune.schemas.chat import ChatCompletionRequest
from selftune.schemas.common import invalid_request
from selftune.schemas.completions import CompletionRequest
from selftune.schemas.responses import ResponseCreateRequest, ResponseUsage
from selftune.services import Services
from selftune.serving.bridge import Stream
from selftune.serving.chat import chat
from selftune.serving.completions import complete
from selftune.serving.responses import respond
from selftune.statuses import BATCHES, BatchAction, BatchStatus

log = logging.getLogger("selftune.batches")

SHARE_S = 5.0
"""With a remote store: how often a batch's progress files go there, so that a server taking the
batch over (its holder died) asks again only the lines answered in the last few seconds."""
RETRY_S = 1.0
"""How long a line the server turned away for load (429) waits before it asks again."""
MAX_REPORTED_ERRORS = 100


class BatchRunner(ObjectRunner):
    kind = "batch"
    machine = BATCHES
    log = log

    def __init__(self, services: Services) -> None:
        super().__init__(services)
        self.batches = services.batches
        self.root = services.settings.home / "batches"
        self.concurrency = services.settings.batch_concurrency
        self._shared: dict[str, float] = {}
        """When each batch's progress last went to the store."""

    def _progress_files(self, batch_id: str) -> tuple[Path, Path]:
        """The batch's output and error progress files on this server. With a remote store, a batch
        another server worked on continues from the progress that server last stored."""
        folder = self.root / batch_id
        folder.mkdir(parents=True, exist_ok=True)
        out, err = folder / "output.jsonl", folder / "errors.jsonl"
        storage = self.services.storage
        if storage.remote and not out.exists() and not err.exists():
            for path in (out, err):
                storage.get(f"batches/{batch_id}/{path.name}", path)
        return out, err

    def _share(self, batch_id: str, *, now: bool = False) -> None:
        """Store the batch's progress files (every ``SHARE_S`` seconds, or ``now``)."""
        storage = self.services.storage
        if not storage.remote or (not now and time.monotonic() - self._shared.get(batch_id, 0.0) < SHARE_S):
            return
        self._shared[batch_id] = time.monotonic()
        for path in (self.root / batch_id / "output.jsonl", self.root / batch_id / "errors.jsonl"):
            if path.exists():
                storage.put(f"batches/{batch_id}/{path.name}", path)

    async def work(self, owner: str, data: dict[str, Any]) -> None:
        await self._advance(owner, Batch.model_validate(data))

    async def _advance(self, owner: str, batch: Batch) -> None:
        """The batch's next steps from where it is; the file and database work runs off the event loop."""
        if batch.status == BatchStatus.VALIDATING:
            batch = await asyncio.to_thread(self._validate, owner, batch)
        if batch.status == BatchStatus.IN_PROGRESS:
            await self._answer_all(owner, batch)
        elif batch.status == BatchStatus.FINALIZING:  # taken over (or restarted) while finishing
            await asyncio.to_thread(self._finish, owner, batch, BatchAction.COMPLETE)
        elif batch.status == BatchStatus.CANCELLING:
            await asyncio.to_thread(self._finish, owner, batch, BatchAction.STOPPED)

    def give_up(self, batch_id: str, error: Exception) -> None:
        """A batch that raised what the runner does not expect fails, naming the error (the log has it
        whole, under the same id), instead of being tried again forever before every later batch."""
        message = internal_error(error, log, f"batch {batch_id} failed").message
        try:
            batch = self.batches.get(None, batch_id)
            self.batches.apply(
                batch, BatchAction.FAIL, errors=BatchErrors(data=[BatchError(code="batch_failed", message=message)])
            )
        except SelftuneError as e:  # deleted, or already final: nothing left to fail
            log.info("batch %s not failed: %s", batch_id, e.message)

    # --- validating -------------------------------------------------------------------------------

    def _validate(self, owner: str, batch: Batch) -> Batch:
        """One pass over the input file. Repeated ``custom_id``s are reported only for a file whose
        lines are otherwise all well formed."""
        errors: list[BatchError] = []
        repeats: list[BatchError] = []
        seen: dict[str, int] = {}
        total = 0
        try:
            for line, obj, problem in self._lines(owner, batch):
                total += 1
                problem = problem or check_line(obj, batch.endpoint, line)
                if problem is not None:
                    errors.append(problem)
                elif obj["custom_id"] in seen:
                    first = seen[obj["custom_id"]]
                    msg = f"custom_id {obj['custom_id']!r} is used again (first on line {first}); make each unique"
                    repeats.append(BatchError(code="duplicate_custom_id", message=msg, param="custom_id", line=line))
                else:
                    seen[obj["custom_id"]] = line
        except SelftuneError as e:  # the input file is gone
            errors.append(BatchError(code="invalid_file", message=e.message, param="input_file_id"))
        errors = errors or repeats
        if total == 0 and not errors:
            errors.append(BatchError(code="empty_file", message="The input file has no requests.", line=None))
        if errors:
            return self.batches.apply(batch, BatchAction.FAIL, errors=BatchErrors(data=errors[:MAX_REPORTED_ERRORS]))
        return self.batches.apply(batch, BatchAction.VALIDATED, request_counts=RequestCounts(total=total))

    def _lines(self, owner: str, batch: Batch) -> Generator[tuple[int, dict[str, Any], BatchError | None]]:
        """(line number, request, problem) for every non-blank line of the input file."""
        rec = self.services.store.get_file(owner, batch.input_file_id)
        return read_lines(self.services.blobs.path(rec.id))

    # --- answering --------------------------------------------------------------------------------

    async def _answer_all(self, owner: str, batch: Batch) -> None:
        out, err = await asyncio.to_thread(self._progress_files, batch.id)
        answered, refused = await asyncio.to_thread(lambda: (progress(out).ids, progress(err).ids))
        done = answered | refused
        counts = RequestCounts(total=batch.request_counts.total, completed=len(answered), failed=len(refused))
        slots = asyncio.Semaphore(self.concurrency)
        stop = asyncio.Event()

        def record(path: Path, line: dict[str, Any], current: Batch) -> bool:
            append(path, line)
            self._share(batch.id)
            return self.batches.save(current)

        async def one(obj: dict[str, Any]) -> None:
            try:
                status, body = await self._call(owner, batch, obj["body"])
                ok = status == 200
                response = {"status_code": status, "request_id": random_id("req_", 32), "body": body}
                if ok:
                    counts.completed += 1
                else:
                    counts.failed += 1
                current = batch.model_copy(update={"request_counts": counts.model_copy()})
                line = result_line(obj["custom_id"], response=response)
                saved = await asyncio.to_thread(record, out if ok else err, line, current)  # fsync: off the loop
                if not saved or self.leases.lost(batch.id):
                    stop.set()  # cancelled or deleted meanwhile, or taken over: take no more lines
            finally:
                slots.release()

        running: set[asyncio.Task[None]] = set()
        lost: SelftuneError | None = None
        lines: Generator[tuple[int, dict[str, Any], BatchError | None]] | None = None
        try:
            lines = await asyncio.to_thread(self._lines, owner, batch)
            # Lines are read a few at a time, off the loop, and each is started only once a slot is
            # free: memory stays bounded whatever the file's size.
            while not stop.is_set() and (chunk := await asyncio.to_thread(_next_lines, lines)):
                for _, obj, _ in chunk:
                    if obj["custom_id"] in done:
                        continue
                    await slots.acquire()
                    await self.services.admission.yield_to_interactive()
                    if stop.is_set() or _past(batch):
                        slots.release()
                        stop.set()
                        break
                    task = asyncio.create_task(one(obj))
                    running.add(task)
                    task.add_done_callback(running.discard)
            await asyncio.gather(*running)
        except SelftuneError as e:  # the input file was deleted before the runner (re)opened it
            await asyncio.gather(*running)
            lost = e
        finally:
            for t in list(running):
                t.cancel()
            if lines is not None:
                lines.close()
        if self.leases.lost(batch.id):
            log.warning("batch %s was taken over by another server; leaving it to that one", batch.id)
            return
        await asyncio.to_thread(self._share, batch.id, now=True)
        self._shared.pop(batch.id, None)
        await asyncio.to_thread(self._end, owner, batch, lost)

    def _end(self, owner: str, batch: Batch, lost: SelftuneError | None) -> None:
        """The last move once no more lines are taken, from where the batch is now."""
        latest = self.batches.get(None, batch.id)
        if lost is not None and latest.status == BatchStatus.IN_PROGRESS:
            msg = (
                f"The input file {batch.input_file_id} was deleted before every line was answered ({lost.message}); "
                "the lines answered are in output_file_id and error_file_id. Upload the rest as a new batch."
            )
            errors = BatchErrors(data=[BatchError(code="invalid_file", message=msg, param="input_file_id")])
            self._finish(owner, latest, BatchAction.FAIL, errors=errors)
        elif latest.status == BatchStatus.CANCELLING:
            self._finish(owner, latest, BatchAction.STOPPED)
        elif _past(latest):  # also why the loop above stopped taking lines, if it did
            self._expire(owner, latest)
        else:
            self._finish(owner, latest, BatchAction.COMPLETE)

    def _expire(self, owner: str, batch: Batch) -> None:
        """Every line not answered (output or error file) gets a ``batch_expired`` line in the error file."""
        out, err = self._progress_files(batch.id)
        done = progress(out).ids | progress(err).ids
        error = {
            "code": "batch_expired",
            "message": "This request could not be executed before the completion window expired.",
        }
        left = 0
        # One write and one fsync for them all: a large batch may have many lines left.
        with err.open("ab") as f:
            with suppress(SelftuneError):  # the input file deleted meanwhile: its lines cannot be named
                for _, obj, _ in self._lines(owner, batch):
                    if obj["custom_id"] not in done:
                        left += 1
                        f.write(encode(result_line(obj["custom_id"], error=error)))
            f.flush()
            os.fsync(f.fileno())
        # Every line answered after all: it made it in time.
        self._finish(owner, batch, BatchAction.EXPIRE if left else BatchAction.COMPLETE)

    async def _call(self, owner: str, batch: Batch, body: Any) -> tuple[int, dict[str, Any]]:
        """One line through its endpoint's own function: (HTTP status, response body or error envelope).
        While the server is busy (a 429) the line waits its turn, as long as the batch has time."""
        while True:
            status, answer = await self._once(owner, batch.endpoint, body)
            if status != RateLimited.status_code or _past(batch):
                return status, answer
            await asyncio.sleep(RETRY_S)

    async def _once(self, owner: str, endpoint: str, body: Any) -> tuple[int, dict[str, Any]]:
        try:
            result: BaseModel | Stream
            if endpoint == "/v1/chat/completions":
                req = ChatCompletionRequest.model_validate(body)
                _no_stream(req.stream)
                result = await chat(req, self.services, owner, None)
            elif endpoint == "/v1/completions":
                creq = CompletionRequest.model_validate(body)
                _no_stream(creq.stream)
                result = await complete(creq, self.services, owner, None)
            else:
                rreq = ResponseCreateRequest.model_validate(body)
                _no_stream(rreq.stream)
                result = await respond(rreq, self.services, owner, None)
            assert not isinstance(result, Stream)  # refused above
            return 200, result.model_dump(mode="json")
        except ValidationError as e:
            err = invalid_request(e.errors())
            return err.status_code, {"error": err.to_dict()}
        except SelftuneError as e:
            return e.status_code, {"error": e.to_dict()}
        except Exception as e:
            return 500, {"error": internal_error(e, log, "batch line failed").to_dict()}

    # --- finishing --------------------------------------------------------------------------------

    def _finish(self, owner: str, batch: Batch, action: BatchAction, **changes: Any) -> None:
        """Register the output and error files, then make the batch's last move with its counts."""
        out, err = self._progress_files(batch.id)
        if action == BatchAction.COMPLETE and batch.status == BatchStatus.IN_PROGRESS:
            batch = self.batches.apply(batch, BatchAction.FINALIZE)
        answered, refused = progress(out), progress(err)
        counts = RequestCounts(total=batch.request_counts.total, completed=len(answered.ids), failed=len(refused.ids))
        files = {
            "output_file_id": self._register(owner, batch, out, "output") if answered.ids else None,
            "error_file_id": self._register(owner, batch, err, "error") if refused.ids else None,
        }
        crash_point("batch.output")
        tokens = answered.input_tokens, answered.output_tokens
        usage = ResponseUsage(input_tokens=tokens[0], output_tokens=tokens[1], total_tokens=sum(tokens))
        try:
            self.batches.apply(
                batch, action, request_counts=counts, model=answered.model, usage=usage, **files, **changes
            )
        except InvalidStatus:  # cancelled in the last moment: the next claim finishes it from there
            for file_id in filter(None, files.values()):
                self.services.store.delete_file(owner, file_id)
                self.services.blobs.delete(file_id)
            raise

    def _register(self, owner: str, batch: Batch, path: Path, which: str) -> str:
        name = f"{batch.id}_{which}.jsonl"
        return register_result(self.services.store, self.services.blobs, owner, path, name, batch.id, "batch_output").id


def _next_lines(lines: Iterator[tuple[int, dict[str, Any], BatchError | None]]) -> list[Any]:
    return list(islice(lines, 64))


def _past(batch: Batch) -> bool:
    return batch.expires_at is not None and now() > batch.expires_at


def _no_stream(stream: bool | None) -> None:
    if stream:
        raise InvalidRequest("stream is not available in a batch; leave it out", param="stream")
