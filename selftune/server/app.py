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
from selftune.errors import InvalidRequest, NotFound, SelftuneError, internal_error
from selftune.evals.runner import EvalRunner
from selftune.export.runner import ExportRunner
from selftune.ids import random_id
from selftune.schemas.common import ERROR_RESPONSES, invalid_request
from selftune.server import (
    batches,
    chat,
    checkpoint_permissions,
    completions,
    evals,
    exports,
    files,
    fine_tuning,
    graders,
    models,
    responses,
    uploads,
    workers,
)
from selftune.server.deps import get_owner, get_services
from selftune.server.edge import TOO_LARGE, Edge, Refused, error_response
from selftune.services import build_services
from selftune.statuses import MACHINES
from selftune.sweeper import Sweeper
from selftune.worker import Worker

log = logging.getLogger("selftune.server")
STATIC = Path(__file__).parent / "static"


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = build_services(settings)
        app.state.services = services
        worker = Worker(services) if settings.worker else None
        runner = BatchRunner(services)
        eval_runner = EvalRunner(services)
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
            eval_runner.start()
            export_runner.start()
            sweeper = asyncio.get_running_loop().create_task(_sweep(Sweeper(services), settings.sweep_seconds))
            yield
        finally:
            if sweeper is not None:
                sweeper.cancel()
            await runner.stop()
            await eval_runner.stop()
            await asyncio.to_thread(export_runner.stop)
            if worker is not None:
                # Lets running jobs save their state (up to SHUTDOWN_GRACE_SECONDS) and requeues them.
                await asyncio.to_thread(worker.stop)
            services.close()

    app = FastAPI(title="selftune", version=__version__, lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.add_middleware(Edge, settings=settings)  # inside the next one: it sees the path with // collapsed
    app.add_middleware(_PathAndRequestId)

    api = APIRouter(prefix="/v1", dependencies=[Depends(get_owner)], responses=ERROR_RESPONSES)
    resources = [
        files,
        uploads,
        models,
        chat,
        completions,
        responses,
        batches,
        fine_tuning,
        checkpoint_permissions,
        graders,
        evals,
        exports,
    ]
    for module in [*resources, workers]:
        api.include_router(module.router)
    app.include_router(api)

    @app.get("/health", include_in_schema=False)
    def health(request: Request) -> dict[str, Any]:
        """Liveness for anyone; what is loaded and running only for a caller with a key (any key in
        local mode), since model names and load say something about the other owners."""
        services = get_services(request)
        out: dict[str, Any] = {"status": "ok", "version": __version__}
        try:
            Edge.owner_of(services.keys, request.headers.get("authorization", ""))
        except SelftuneError:
            return out
        return {**out, **services.engine.stats(), **services.admission.stats()}

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


async def _sweep(sweeper: Sweeper, every: float) -> None:
    """What has outlived its time goes (``selftune.sweeper``), off the event loop, every ``every`` s."""
    while True:
        try:
            await asyncio.to_thread(sweeper.sweep)
        except Exception:  # a full disk, a database blip: the next round tries again
            log.exception("sweeping failed")
        await asyncio.sleep(every)


async def _selftune_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SelftuneError)
    return error_response(exc)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(invalid_request(exc.errors()))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc, Refused):
        return error_response(exc.error)
    if exc.status_code in (404, 405):
        message = f"Unknown request URL: {request.method} {request.url.path}."
        return error_response(NotFound(message, code="unknown_url"))
    if exc.status_code == 413 and TOO_LARGE in request.scope:  # the body passed its limit while streaming in
        return error_response(request.scope[TOO_LARGE])
    return error_response(InvalidRequest(str(exc.detail)), exc.status_code)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    return error_response(internal_error(exc, log, f"unexpected error in {request.method} {request.url.path}"))


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
