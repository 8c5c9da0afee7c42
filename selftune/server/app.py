"""``create_app(settings)``: builds the FastAPI app, its services, and the one error handler.

Services (``selftune.services``: store, blobs, catalog, engine, exports) are created in the lifespan
and kept on ``app.state``; there is no module-level state. The background work runs beside the API:
the training worker on a thread (unless ``SELFTUNE_WORKER=false``), the batch runner on the event
loop, the export runner on a thread, and a sweeper that expires unfinished uploads. Every error,
ours or the framework's, leaves through ``_error_response`` in OpenAI's envelope
``{"error": {"message", "type", "param", "code"}}``. Validation failures are 400 (never FastAPI's
422), unknown URLs 404.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from selftune import __version__
from selftune.batch_runner import BatchRunner
from selftune.config import Settings
from selftune.errors import InvalidRequest, NotFound, SelftuneError
from selftune.export.runner import ExportRunner
from selftune.ids import random_id
from selftune.schemas.common import invalid_request
from selftune.server import batches, chat, completions, exports, files, fine_tuning, models, responses, uploads
from selftune.server.deps import get_owner, get_services
from selftune.services import Core, build_services
from selftune.statuses import MACHINES
from selftune.worker import Worker

log = logging.getLogger("selftune.server")
STATIC = Path(__file__).parent / "static"


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = build_services(settings)
        app.state.services = services
        worker = Worker(settings, services.store, services.blobs, services.catalog) if settings.worker else None
        runner = BatchRunner(services)
        export_runner = ExportRunner(services.exports)
        sweeper: asyncio.Task[None] | None = None
        try:
            if settings.preload:
                spec = services.catalog.get_base(settings.default_model)
                log.info("loading the default model %s ...", spec.name)
                await asyncio.wrap_future(services.engine.preload(spec))
            if worker is not None:
                worker.start()
            runner.start()
            export_runner.start()
            sweeper = asyncio.get_running_loop().create_task(_expire_uploads(services))
            yield
        finally:
            if sweeper is not None:
                sweeper.cancel()
            await runner.stop()
            await asyncio.to_thread(export_runner.stop)
            if worker is not None:
                # Lets running jobs save their state (up to SHUTDOWN_GRACE_SECONDS) and requeues them.
                await asyncio.to_thread(worker.stop)
            services.close()

    app = FastAPI(title="selftune", version=__version__, lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.add_middleware(_PathAndRequestId)

    api = APIRouter(prefix="/v1", dependencies=[Depends(get_owner)])
    for module in (files, uploads, models, chat, completions, responses, batches, fine_tuning, exports):
        api.include_router(module.router)
    app.include_router(api)

    @app.get("/health", include_in_schema=False)
    def health(request: Request) -> dict[str, Any]:
        stats = get_services(request).engine.stats()
        return {"status": "ok", "version": __version__, **stats}

    # The dashboard: static files that call /v1 like any other client (no extra server-side routes).
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/statuses.js", include_in_schema=False)
    def statuses() -> Response:
        """Every status machine (``selftune.statuses``), for the dashboard: each object's statuses, the
        final ones, the ones with work under way, and where each action (each button) is allowed from."""
        body = f"window.SELFTUNE_MACHINES = {json.dumps({name: m.describe() for name, m in MACHINES.items()})};\n"
        return Response(body, media_type="text/javascript", headers={"Cache-Control": "no-cache"})

    app.add_exception_handler(SelftuneError, _selftune_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
    return app


async def _expire_uploads(services: Core) -> None:
    """Unfinished multipart uploads past their hour lose their parts (checked once a minute)."""
    while True:
        try:
            await asyncio.to_thread(uploads.expire_uploads, services)
        except Exception:
            log.exception("expiring uploads failed")
        await asyncio.sleep(60)


def _error_response(exc: SelftuneError, status: int | None = None) -> JSONResponse:
    """The one place an error becomes HTTP: OpenAI's envelope, built by ``SelftuneError.to_dict``."""
    status = status or exc.status_code
    headers = {}
    if status >= 500 and status != 503:
        headers["x-should-retry"] = "false"  # our own bugs do not get better by retrying
    return JSONResponse({"error": exc.to_dict()}, status_code=status, headers=headers)


async def _selftune_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SelftuneError)
    return _error_response(exc)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return _error_response(invalid_request(exc.errors()))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code in (404, 405):
        message = f"Unknown request URL: {request.method} {request.url.path}."
        return _error_response(NotFound(message, code="unknown_url"))
    return _error_response(InvalidRequest(str(exc.detail)), exc.status_code)


async def _unexpected_error(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error", exc_info=exc)
    return _error_response(SelftuneError(f"The server had an error: {exc.__class__.__name__}: {exc}"))


_SLASHES = re.compile(r"/{2,}")
_RAW_SLASHES = re.compile(rb"/{2,}")


class _PathAndRequestId:
    """Collapses ``//`` (the legacy SDK with a trailing-slash api_base sends ``/v1//files``) and
    adds ``x-request-id`` and ``request-id`` to every response (the two SDKs read one each)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "//" in scope["path"]:
            scope = dict(scope, path=_SLASHES.sub("/", scope["path"]))
            if scope.get("raw_path"):
                scope["raw_path"] = _RAW_SLASHES.sub(b"/", scope["raw_path"])
        request_id = random_id("req_", 32).encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id),
                    (b"request-id", request_id),
                ]
            await send(message)

        await self.app(scope, receive, send_with_id)
