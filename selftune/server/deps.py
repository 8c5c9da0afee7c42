"""What the route modules share: the services and the caller's owner (from the API key) as request
dependencies, and a streamed answer of the serving layer sent as Server-Sent Events."""

from __future__ import annotations

import hmac
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from fastapi.responses import StreamingResponse

from selftune.config import LOCAL_OWNER
from selftune.errors import AuthenticationFailed
from selftune.services import Services
from selftune.serving.bridge import Stream

T = TypeVar("T")


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_owner(request: Request, services: ServicesDep) -> str:
    """The owner of the presented API key; in local mode (no keys configured) everyone is ``local``."""
    if not services.keys:
        return LOCAL_OWNER
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationFailed(
            "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY' "
            "(the openai SDK does this from api_key= or OPENAI_API_KEY).",
            code="missing_api_key",
        )
    owner = None
    for key, key_owner in services.keys.items():
        # Compare against every key, in constant time, so timing reveals nothing about which matched.
        if hmac.compare_digest(key.encode(), token.encode()):
            owner = key_owner
    if owner is None:
        shown = token[:3] + "*" * 4 + token[-4:] if len(token) > 8 else "*" * len(token)
        raise AuthenticationFailed(f"Incorrect API key provided: {shown}.", code="invalid_api_key")
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
