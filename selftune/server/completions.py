"""``/v1/completions``: the route; the completion, or its stream, is ``serving.completions``'."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from selftune.schemas.completions import Completion, CompletionRequest
from selftune.server.deps import OwnerDep, ServicesDep, streamed
from selftune.server.edge import Route
from selftune.serving.completions import complete

router = APIRouter(tags=["completions"], route_class=Route)


@router.post("/completions", response_model=None)
async def create_completion(
    body: CompletionRequest, request: Request, services: ServicesDep, owner: OwnerDep
) -> Completion | StreamingResponse:
    return streamed(await complete(body, services, owner, request.is_disconnected))
