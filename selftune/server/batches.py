"""``/v1/batches``: create, retrieve, list and cancel; the work itself is ``batch_runner``'s.

A batch is an uploaded ``purpose=batch`` JSONL file of requests to one endpoint. Creating one only
records it (``validating``); the runner checks the file, answers its lines in the background and
writes the output and error files in OpenAI's line format.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from selftune.errors import InvalidRequest
from selftune.ids import now, random_id
from selftune.schemas.batches import CANCELLABLE, ENDPOINTS, WINDOW_SECONDS, Batch, BatchCreateRequest, BatchList
from selftune.server.deps import OwnerDep, ServicesDep
from selftune.store import ObjectRecord

router = APIRouter(tags=["batches"])

KIND, WHAT = "batch", "batch"


@router.post("/batches")
def create_batch(body: BatchCreateRequest, services: ServicesDep, owner: OwnerDep) -> Batch:
    if body.endpoint not in ENDPOINTS:
        raise InvalidRequest(
            f"endpoint {body.endpoint!r} cannot be batched here; use one of {', '.join(ENDPOINTS)}", param="endpoint"
        )
    if body.completion_window not in WINDOW_SECONDS:
        raise InvalidRequest("completion_window must be '24h'", param="completion_window")
    rec = services.store.get_file(owner, body.input_file_id)
    if rec.purpose != "batch":
        raise InvalidRequest(
            f"File {rec.id} has purpose {rec.purpose!r}; upload the requests with purpose='batch'",
            param="input_file_id",
        )
    created = now()
    batch = Batch(
        id=random_id("batch_"),
        endpoint=body.endpoint,
        input_file_id=rec.id,
        completion_window=body.completion_window,
        status="validating",
        created_at=created,
        expires_at=created + (services.settings.batch_window_seconds or WINDOW_SECONDS[body.completion_window]),
        metadata=body.metadata,
    )
    services.store.insert_object(
        ObjectRecord(id=batch.id, kind=KIND, owner=owner, created_at=created, status=batch.status, data=dump(batch))
    )
    return batch


@router.get("/batches/{batch_id}")
def retrieve_batch(batch_id: str, services: ServicesDep, owner: OwnerDep) -> Batch:
    return Batch.model_validate(services.store.get_object(KIND, owner, batch_id, WHAT).data)


@router.get("/batches")
def list_batches(
    services: ServicesDep, owner: OwnerDep, limit: Annotated[int, Query(ge=1, le=100)] = 20, after: str | None = None
) -> BatchList:
    recs, has_more = services.store.list_objects(KIND, owner, limit=limit, after=after)
    data = [Batch.model_validate(r.data) for r in recs]
    return BatchList(
        data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None, has_more=has_more
    )


@router.post("/batches/{batch_id}/cancel")
def cancel_batch(batch_id: str, services: ServicesDep, owner: OwnerDep) -> Batch:
    """Stops taking new lines; the runner finishes as ``cancelled`` with the files of what was answered."""
    while True:
        batch = Batch.model_validate(services.store.get_object(KIND, owner, batch_id, WHAT).data)
        if batch.status in ("cancelling", "cancelled"):
            return batch
        if batch.status not in CANCELLABLE:
            raise InvalidRequest(f"Batch {batch_id} is already {batch.status}; it cannot be cancelled", param="id")
        moved = batch.moved("cancelling", now())
        if services.store.update_object(batch_id, moved.status, dump(moved), from_statuses=[batch.status]):
            return moved
        # The runner moved it meanwhile (validating -> in_progress, or a count): read it again.


def dump(batch: Batch) -> dict[str, object]:
    return batch.model_dump(mode="json")
