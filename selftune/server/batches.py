"""``/v1/batches``: create, retrieve, list and cancel; the work itself is ``selftune.batch_runner``'s.

A batch is an uploaded ``purpose=batch`` JSONL file of requests to one endpoint. Creating one only
records it (``validating``); the runner checks the file, answers its lines in the background and
writes the output and error files in OpenAI's line format.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from selftune.errors import InvalidRequest
from selftune.ids import now, random_id
from selftune.schemas.batches import ENDPOINTS, WINDOW_SECONDS, Batch, BatchCreateRequest, BatchList
from selftune.server.deps import OwnerDep, ServicesDep
from selftune.server.edge import Route
from selftune.statuses import BatchAction, BatchStatus

router = APIRouter(tags=["batches"], route_class=Route)


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
        status=BatchStatus.VALIDATING,
        created_at=created,
        expires_at=created + (services.settings.batch_window_seconds or WINDOW_SECONDS[body.completion_window]),
        metadata=body.metadata,
    )
    return services.batches.insert(owner, batch)


@router.get("/batches/{batch_id}")
def retrieve_batch(batch_id: str, services: ServicesDep, owner: OwnerDep) -> Batch:
    return services.batches.get(owner, batch_id)


@router.get("/batches")
def list_batches(
    services: ServicesDep, owner: OwnerDep, limit: Annotated[int, Query(ge=1, le=100)] = 20, after: str | None = None
) -> BatchList:
    data, has_more = services.batches.page(owner, limit=limit, after=after)
    return BatchList(
        data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None, has_more=has_more
    )


@router.post("/batches/{batch_id}/cancel")
def cancel_batch(batch_id: str, services: ServicesDep, owner: OwnerDep) -> Batch:
    """Stops taking new lines; the runner finishes as ``cancelled`` with the files of what was answered.
    Cancelling a batch that is already being (or has been) cancelled returns it as it is."""
    batch = services.batches.get(owner, batch_id)
    if batch.status in (BatchStatus.CANCELLING, BatchStatus.CANCELLED):
        return batch
    return services.batches.apply(batch, BatchAction.CANCEL)
