"""Runs batches in the background of a server: validate, answer every line, write the files.

Each server's runner claims one batch at a time, oldest first (``selftune.claims``: a lease on the
database's clock that a thread renews), so N servers on one database answer each batch once, and a
batch whose server died is taken over by another once its lease lapses. At most
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
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from selftune.claims import LeaseKeeper, holder_id
from selftune.errors import InvalidRequest, InvalidStatus, SelftuneError
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

POLL_S = 0.5
MAX_REPORTED_ERRORS = 100


class BatchRunner:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.batches = services.batches
        self.root = services.settings.home / "batches"
        self.concurrency = services.settings.batch_concurrency
        self.holder = holder_id()
        self.lease_seconds = services.settings.lease_seconds
        self.leases = LeaseKeeper(services.store.claims, "objects", self.holder, self.lease_seconds)
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.leases.start()
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Answers in flight are dropped unwritten; whoever takes the batch next asks them again."""
        if self.task is not None:
            self.task.cancel()
            with suppress(asyncio.CancelledError):
                await self.task
        self.leases.stop()

    async def _loop(self) -> None:
        while True:
            claimed = None
            try:
                self.services.store.claims.release_dead("batch", BATCHES.claimed, self.holder)
                claimed = self.services.store.claims.claim_object(
                    "batch", BATCHES.claimed, self.holder, self.lease_seconds
                )
                if claimed is not None:
                    log.info("batch %s claimed by %s", claimed.id, self.holder)
                    self.leases.hold(claimed.id)
                    await self._advance(claimed.owner, Batch.model_validate(claimed.data))
            except asyncio.CancelledError:
                raise
            except InvalidStatus as e:  # cancelled (say) while it was being validated: the next claim goes on
                log.info("batch %s moved meanwhile: %s", claimed.id if claimed else "?", e.message)
            except Exception:  # a bug must not stop every later batch; the next poll tries again
                log.exception("batch runner error")
            finally:
                if claimed is not None:  # finished (its last move let it go), or to be taken again
                    self.leases.drop(claimed.id)
                    self.services.store.claims.release("objects", self.holder, claimed.id)
            if claimed is None:
                await asyncio.sleep(POLL_S)

    async def _advance(self, owner: str, batch: Batch) -> None:
        if batch.status == BatchStatus.VALIDATING:
            batch = self._validate(owner, batch)
        if batch.status == BatchStatus.IN_PROGRESS:
            await self._answer_all(owner, batch)
        elif batch.status == BatchStatus.FINALIZING:  # taken over (or restarted) while finishing
            self._finish(owner, batch, BatchAction.COMPLETE)
        elif batch.status == BatchStatus.CANCELLING:
            self._finish(owner, batch, BatchAction.STOPPED)

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
                problem = problem or _check_line(obj, batch.endpoint, line)
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

    def _lines(self, owner: str, batch: Batch) -> Iterator[tuple[int, dict[str, Any], BatchError | None]]:
        """(line number, request, problem) for every non-blank line of the input file."""
        rec = self.services.store.get_file(owner, batch.input_file_id)
        with self.services.blobs.path(rec.id).open("rb") as f:
            for line, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    yield line, {}, BatchError(code="invalid_json", message=f"not valid JSON: {e}", line=line)
                    continue
                if not isinstance(obj, dict):
                    msg = "each line must be a JSON object"
                    yield line, {}, BatchError(code="invalid_request", message=msg, line=line)
                    continue
                yield line, obj, None

    # --- answering --------------------------------------------------------------------------------

    async def _answer_all(self, owner: str, batch: Batch) -> None:
        folder = self.root / batch.id
        folder.mkdir(parents=True, exist_ok=True)
        out, err = folder / "output.jsonl", folder / "errors.jsonl"
        answered, refused = _progress(out).ids, _progress(err).ids
        done = answered | refused
        counts = RequestCounts(total=batch.request_counts.total, completed=len(answered), failed=len(refused))
        slots = asyncio.Semaphore(self.concurrency)
        stop = asyncio.Event()

        async def one(obj: dict[str, Any]) -> None:
            try:
                status, body = await self._call(owner, batch.endpoint, obj["body"])
                ok = status == 200
                response = {"status_code": status, "request_id": random_id("req_", 32), "body": body}
                _append(out if ok else err, _result(obj["custom_id"], response=response))
                if ok:
                    counts.completed += 1
                else:
                    counts.failed += 1
                current = batch.model_copy(update={"request_counts": counts.model_copy()})
                if not self.batches.save(current) or self.leases.lost(batch.id):
                    stop.set()  # cancelled or deleted meanwhile, or taken over: take no more lines
            finally:
                slots.release()

        running: set[asyncio.Task[None]] = set()
        lost: SelftuneError | None = None
        try:
            # A line is read only once a slot is free: memory stays bounded whatever the file's size.
            for _, obj, _ in self._lines(owner, batch):
                if obj["custom_id"] in done:
                    continue
                await slots.acquire()
                if stop.is_set() or _past(batch):
                    slots.release()
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
        if self.leases.lost(batch.id):
            log.warning("batch %s was taken over by another server; leaving it to that one", batch.id)
            return
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
        folder = self.root / batch.id
        err = folder / "errors.jsonl"
        done = _progress(folder / "output.jsonl").ids | _progress(err).ids
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
                        f.write(_line(_result(obj["custom_id"], error=error)))
            f.flush()
            os.fsync(f.fileno())
        # Every line answered after all: it made it in time.
        self._finish(owner, batch, BatchAction.EXPIRE if left else BatchAction.COMPLETE)

    async def _call(self, owner: str, endpoint: str, body: Any) -> tuple[int, dict[str, Any]]:
        """One line through its endpoint's own function: (HTTP status, response body or error envelope)."""
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
            log.exception("batch line failed")
            return 500, {"error": SelftuneError(f"The server had an error: {e.__class__.__name__}: {e}").to_dict()}

    # --- finishing --------------------------------------------------------------------------------

    def _finish(self, owner: str, batch: Batch, action: BatchAction, **changes: Any) -> None:
        """Register the output and error files, then make the batch's last move with its counts."""
        folder = self.root / batch.id
        if action == BatchAction.COMPLETE and batch.status == BatchStatus.IN_PROGRESS:
            batch = self.batches.apply(batch, BatchAction.FINALIZE)
        out, err = folder / "output.jsonl", folder / "errors.jsonl"
        answered, refused = _progress(out), _progress(err)
        counts = RequestCounts(total=batch.request_counts.total, completed=len(answered.ids), failed=len(refused.ids))
        files = {
            "output_file_id": self._register(owner, batch, out, "output") if answered.ids else None,
            "error_file_id": self._register(owner, batch, err, "error") if refused.ids else None,
        }
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
        return register_result(self.services.store, self.services.blobs, owner, path, name, "batch_output").id


def _check_line(obj: dict[str, Any], endpoint: str, line: int) -> BatchError | None:
    if not isinstance(obj.get("custom_id"), str) or not obj["custom_id"]:
        return BatchError(code="missing_custom_id", message="each line needs a string custom_id", line=line)
    if obj.get("method") != "POST":
        return BatchError(code="invalid_method", message='method must be "POST"', param="method", line=line)
    if obj.get("url") != endpoint:
        msg = f"url {obj.get('url')!r} is not this batch's endpoint {endpoint!r}; one endpoint per batch"
        return BatchError(code="mismatched_url", message=msg, param="url", line=line)
    if not isinstance(obj.get("body"), dict):
        return BatchError(code="invalid_body", message="body must be a JSON object", param="body", line=line)
    return None


def _past(batch: Batch) -> bool:
    return batch.expires_at is not None and now() > batch.expires_at


def _no_stream(stream: bool | None) -> None:
    if stream:
        raise InvalidRequest("stream is not available in a batch; leave it out", param="stream")


@dataclass
class _Progress:
    """What a progress file holds: the ``custom_id``s answered, and the tokens and model of its answers."""

    ids: set[str] = field(default_factory=set)
    input_tokens: int = 0
    output_tokens: int = 0
    model: str | None = None


def _progress(path: Path) -> _Progress:
    """A progress file read line by line; a torn last line (a crash mid-write) is cut."""
    out = _Progress()
    if not path.exists():
        return out
    good = 0
    with path.open("rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break
            good += len(raw)
            record = json.loads(raw)
            out.ids.add(record["custom_id"])
            if record["response"] is None:  # a line that never ran (batch_expired)
                continue
            body = record["response"]["body"]
            usage = body.get("usage") or {}
            # chat and completions count prompt/completion tokens; responses count input/output tokens.
            out.input_tokens += int(usage.get("prompt_tokens", usage.get("input_tokens", 0)))
            out.output_tokens += int(usage.get("completion_tokens", usage.get("output_tokens", 0)))
            out.model = out.model or body.get("model")
    if good != path.stat().st_size:
        with path.open("r+b") as f:
            f.truncate(good)
    return out


def _result(
    custom_id: str, response: dict[str, Any] | None = None, error: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One line of an output or error file, in OpenAI's format."""
    return {"id": random_id("batch_req_"), "custom_id": custom_id, "response": response, "error": error}


def _line(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, ensure_ascii=False) + "\n").encode()


def _append(path: Path, record: dict[str, Any]) -> None:
    with path.open("ab") as f:
        f.write(_line(record))
        f.flush()
        os.fsync(f.fileno())
