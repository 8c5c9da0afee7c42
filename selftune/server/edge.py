"""What every request meets before its route: the limits a client cannot talk its way past.

``Edge`` is the outermost ASGI middleware (``create_app`` adds it), so all of this happens before a
byte of the body is read, and before anything is parsed:

1. **Host** (local mode only): the request must be addressed to a loopback name. A web page that
   rebinds its own domain to 127.0.0.1 (DNS rebinding) sends that domain as ``Host``: 421.
2. **Size**: a body over its route's limit is refused in OpenAI's envelope: at once when its
   ``Content-Length`` says so, else as soon as the streamed bytes pass it (Starlette's body limiter,
   set per route here because the limits come from the settings). A file upload takes
   ``SELFTUNE_MAX_UPLOAD_BYTES`` (over it: 400 ``file_too_large``, as ever), a part of a multipart
   upload 64 MB (400), every other request ``SELFTUNE_MAX_REQUEST_BYTES`` (413 ``request_too_large``).
3. **Key**: with API keys, a ``/v1`` request without a valid one is a 401 before its body is read;
   the owner it names is kept for the route (``deps.get_owner``).

Bodies are JSON parsed within bounds (``Route``: ``selftune.safejson``), so a number of 5,000
digits or JSON nested 20,000 deep is a 400 that says so, never a 500.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.exceptions import HTTPException
from fastapi.routing import APIRoute
from starlette.datastructures import Headers
from starlette.middleware.body_limit import RequestBodyLimitResponder
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from selftune import safejson
from selftune.blobs import too_large as file_too_large
from selftune.config import LOCAL_OWNER, Settings
from selftune.errors import (
    AuthenticationFailed,
    InvalidJSON,
    InvalidRequest,
    MisdirectedRequest,
    RateLimited,
    SelftuneError,
    TooLarge,
)
from selftune.schemas.uploads import MAX_PART_BYTES

OWNER = "selftune.owner"
"""Where ``Edge`` leaves the owner of the request's key in the ASGI scope."""
TOO_LARGE = "selftune.too_large"
"""Where ``Edge`` leaves the error a body over its route's limit gets (``app._http_error`` sends it)."""

MULTIPART_SLACK = 64 * 1024
"""Room for multipart boundaries and the small form fields around a file."""


def error_response(exc: SelftuneError, status: int | None = None) -> JSONResponse:
    """The one place an error becomes HTTP: OpenAI's envelope, built by ``SelftuneError.to_dict``."""
    status = status or exc.status_code
    headers = {}
    if status >= 500 and status != 503:
        headers["x-should-retry"] = "false"  # our own bugs do not get better by retrying
    if isinstance(exc, RateLimited):
        headers["retry-after"] = str(max(1, round(exc.retry_after)))
    return JSONResponse({"error": exc.to_dict()}, status_code=status, headers=headers)


class Edge:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.keys = settings.keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        try:
            if not self.keys:
                _check_host(headers.get("host"))
            limit, refusal = self.limit(scope["path"])
            scope[TOO_LARGE] = refusal
            declared = headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise refusal
            if scope["path"].startswith("/v1"):
                scope[OWNER] = self.owner_of(self.keys, headers.get("authorization", ""))
        except SelftuneError as e:
            await error_response(e)(scope, receive, send)
            return
        await RequestBodyLimitResponder(self.app, limit)(scope, receive, send)

    def limit(self, path: str) -> tuple[int, SelftuneError]:
        """The largest body ``path`` takes (a whole file, a part of one, or any other request), and
        the error a larger one gets."""
        if path.rstrip("/") == "/v1/files":
            return self.settings.max_upload_bytes + MULTIPART_SLACK, file_too_large(self.settings.max_upload_bytes)
        if path.startswith("/v1/uploads/") and path.rstrip("/").endswith("/parts"):
            part = InvalidRequest(f"A part holds at most {MAX_PART_BYTES:,} bytes; send smaller parts.", param="data")
            return MAX_PART_BYTES + MULTIPART_SLACK, part
        return self.settings.max_request_bytes, too_large(self.settings.max_request_bytes)

    @staticmethod
    def owner_of(keys: dict[str, str], authorization: str) -> str:
        """The owner of the presented API key; in local mode (no keys configured) everyone is ``local``."""
        if not keys:
            return LOCAL_OWNER
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationFailed(
                "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY' "
                "(the openai SDK does this from api_key= or OPENAI_API_KEY).",
                code="missing_api_key",
            )
        owner = None
        for key, key_owner in keys.items():
            # Compare against every key, in constant time, so timing reveals nothing about which matched.
            if hmac.compare_digest(key.encode(), token.encode()):
                owner = key_owner
        if owner is None:
            shown = token[:3] + "*" * 4 + token[-4:] if len(token) > 8 else "*" * len(token)
            raise AuthenticationFailed(f"Incorrect API key provided: {shown}.", code="invalid_api_key")
        return owner


def _check_host(host: str | None) -> None:
    if host is None:
        return  # HTTP/1.0 without Host: no name to have been rebound
    name = host.rsplit("]", 1)[0].lstrip("[") if host.startswith("[") else host.rsplit(":", 1)[0]
    if name == "localhost" or name.endswith(".localhost") or _loopback_ip(name):
        return
    raise MisdirectedRequest(
        f"This server runs in local mode (no API keys) and answers only requests addressed to a loopback "
        f"name (127.0.0.1, localhost, [::1]), not {host!r}. To serve other names, configure "
        "SELFTUNE_API_KEYS.",
        param="host",
    )


def _loopback_ip(name: str) -> bool:
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def too_large(limit: int) -> TooLarge:
    return TooLarge(
        f"The request body is larger than this server's limit of {limit:,} bytes. Send less, or raise "
        "SELFTUNE_MAX_REQUEST_BYTES on the server.",
        param="body",
    )


class Refused(HTTPException):
    """A ``SelftuneError`` raised where FastAPI only passes ``HTTPException`` on (while it reads a body)."""

    def __init__(self, error: SelftuneError) -> None:
        super().__init__(error.status_code, error.message)
        self.error = error


class _BoundedRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            try:
                self._json = safejson.loads(await self.body(), "the request body")
            except InvalidJSON as e:
                raise Refused(e) from None
        return self._json


class Route(APIRoute):
    """Every API route: its JSON body is read by ``selftune.safejson``, within bounds."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def bounded(request: Request) -> Response:
            return await handler(_BoundedRequest(request.scope, request.receive, request._send))

        return bounded
