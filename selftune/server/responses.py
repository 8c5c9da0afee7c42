"""``/v1/responses``: the routes; responses, their streams and stored ones are ``serving.responses``'."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from selftune.errors import InvalidRequest
from selftune.schemas.responses import InputItemList, ResponseCreateRequest, ResponseDeleted, ResponseObject
from selftune.server.deps import OwnerDep, ServicesDep, streamed
from selftune.server.edge import Route
from selftune.serving import responses

router = APIRouter(tags=["responses"], route_class=Route)


@router.post("/responses", response_model=None)
async def create_response(
    body: ResponseCreateRequest, request: Request, services: ServicesDep, owner: OwnerDep
) -> ResponseObject | StreamingResponse:
    return streamed(await responses.respond(body, services, owner, request.is_disconnected))


@router.get("/responses/{response_id}")
def retrieve_response(response_id: str, services: ServicesDep, owner: OwnerDep) -> ResponseObject:
    return responses.retrieve(services, owner, response_id)


@router.get("/responses/{response_id}/input_items")
def list_input_items(
    response_id: str,
    request: Request,
    services: ServicesDep,
    owner: OwnerDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
) -> InputItemList:
    # SDKs send a list as include[]=a (brackets) or include=a (repeated): either is refused, by name.
    include = request.query_params.getlist("include") + request.query_params.getlist("include[]")
    if include:
        raise InvalidRequest(
            f"nothing extra can be included ({', '.join(include)}); leave include out", param="include"
        )
    return responses.input_items(services, owner, response_id, limit=limit, order=order, after=after)


@router.delete("/responses/{response_id}")
def delete_response(response_id: str, services: ServicesDep, owner: OwnerDep) -> ResponseDeleted:
    return responses.delete(services, owner, response_id)
