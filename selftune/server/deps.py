"""What the route modules share: the services and the caller's owner (from the API key) as request
dependencies, the route class that reads JSON within bounds, and a streamed answer of the serving
layer sent as Server-Sent Events."""

from __future__ import annotations

from typing import Annotated, TypeVar

from fastapi import Depends, Request
from fastapi.responses import StreamingResponse

from selftune.server.edge import OWNER
from selftune.services import Services
from selftune.serving.bridge import Stream

T = TypeVar("T")


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_owner(request: Request) -> str:
    """The owner of the request's API key, as ``edge.Edge`` found it before the body was read (in
    local mode, ``local``)."""
    owner: str = request.scope[OWNER]
    return owner


OwnerDep = Annotated[str, Depends(get_owner)]


def streamed(answer: T | Stream) -> T | StreamingResponse:
    """An answer as it is, or a ``Stream`` as ``text/event-stream`` that no proxy buffers."""
    if not isinstance(answer, Stream):
        return answer
    return StreamingResponse(
        answer.events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
