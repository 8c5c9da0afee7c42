"""``/v1/fine_tuning/checkpoints/{model}/permissions``: share a fine-tuned model or checkpoint with
another owner, list and revoke its grants (``selftune.permissions`` owns what a grant allows).

OpenAI asks for an admin key here; in selftune the model's owner is its admin. The model id holds
``:`` and may hold ``/``, so it routes through a ``{model:path}`` converter as ``/v1/models`` does.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from selftune.permissions import Permissions
from selftune.schemas.fine_tuning import (
    CheckpointPermission,
    CheckpointPermissionDeleted,
    CheckpointPermissionList,
    CreateCheckpointPermissionRequest,
)
from selftune.server.deps import OwnerDep, ServicesDep
from selftune.server.edge import Route

router = APIRouter(tags=["fine-tuning"], route_class=Route)
PATH = "/fine_tuning/checkpoints/{model:path}/permissions"


@router.post(PATH)
def create_permissions(
    model: str, body: CreateCheckpointPermissionRequest, services: ServicesDep, owner: OwnerDep
) -> CheckpointPermissionList:
    data = Permissions(services.store).grant(owner, model, body.project_ids, set(services.keys.values()))
    return _listed(data)


@router.get(PATH)
def list_permissions(
    model: str,
    services: ServicesDep,
    owner: OwnerDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
    after: str | None = None,
    order: Literal["ascending", "descending"] = "descending",
    project_id: str | None = None,
) -> CheckpointPermissionList:
    data, more = Permissions(services.store).page(
        owner, model, limit=limit, after=after, ascending=order == "ascending", project_id=project_id
    )
    return _listed(data, more)


@router.delete(PATH + "/{permission_id}")
def delete_permission(
    model: str, permission_id: str, services: ServicesDep, owner: OwnerDep
) -> CheckpointPermissionDeleted:
    Permissions(services.store).revoke(owner, model, permission_id)
    return CheckpointPermissionDeleted(id=permission_id)


def _listed(data: list[CheckpointPermission], more: bool = False) -> CheckpointPermissionList:
    first, last = (data[0].id, data[-1].id) if data else (None, None)
    return CheckpointPermissionList(data=data, first_id=first, last_id=last, has_more=more)
