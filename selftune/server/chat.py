"""``/v1/chat/completions`` (and the legacy ``/v1/engines/{model}/chat/completions``): the route.

The answer, or its stream, is ``serving.chat``'s; the batch runner calls the same function.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from selftune.schemas.chat import ChatCompletion, ChatCompletionRequest
from selftune.server.deps import OwnerDep, ServicesDep, streamed
from selftune.server.edge import Route
from selftune.serving.chat import chat

router = APIRouter(tags=["chat"], route_class=Route)


@router.post("/chat/completions", response_model=None)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, services: ServicesDep, owner: OwnerDep
) -> ChatCompletion | StreamingResponse:
    return streamed(await chat(body, services, owner, request.is_disconnected))


@router.post("/engines/{engine}/chat/completions", response_model=None, include_in_schema=False)
async def create_chat_completion_engine(
    engine: str, raw: Annotated[dict[str, Any], Body()], request: Request, services: ServicesDep, owner: OwnerDep
) -> ChatCompletion | StreamingResponse:
    """Legacy 0.28 ``ChatCompletion.create(engine=...)`` puts the model in the path, not the body."""
    try:
        body = ChatCompletionRequest.model_validate({**raw, "model": engine})
    except ValidationError as e:
        raise RequestValidationError(e.errors()) from e
    return await create_chat_completion(body, request, services, owner)
