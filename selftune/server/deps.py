"""Request dependencies: the app's services and the caller's owner (from the API key)."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from selftune.config import LOCAL_OWNER
from selftune.errors import AuthenticationFailed
from selftune.exports import Exports
from selftune.inference.engines import Engines
from selftune.services import Core


@dataclass
class Services(Core):
    """Everything a handler may call; built once in the app's lifespan and kept on ``app.state``."""

    keys: dict[str, str]
    engine: Engines
    exports: Exports

    def close(self) -> None:
        self.exports.close()
        self.engine.close()
        super().close()


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
