"""``/v1/models``: list, retrieve and delete (fine-tuned models only; deleting frees the adapter's disk).

Model ids contain ``:`` and may contain ``/`` (``ft:org/base:owner:suffix:id``); SDKs encode those
differently (§1.5 of the API notes), and ASGI decodes ``%2F`` before routing, so the id routes use
a ``{model:path}`` converter.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter

from selftune.atomic import remove_tree
from selftune.errors import PermissionDenied
from selftune.permissions import Permissions, resolve_callable
from selftune.schemas.models import Model, ModelDeleted, ModelList
from selftune.server.deps import OwnerDep, ServicesDep
from selftune.server.edge import Route
from selftune.services import Services

router = APIRouter(tags=["models"], route_class=Route)
BASE_OWNER = "selftune"


@router.get("/models")
def list_models(services: ServicesDep, owner: OwnerDep) -> ModelList:
    # The default model first: it is what the aliases point at, and what the dashboard preselects.
    specs = sorted(services.catalog.base_models(), key=lambda s: s.name != services.settings.default_model)
    base = [Model(id=s.name, created=s.created, owned_by=BASE_OWNER) for s in specs]
    tuned = [Model(id=m.id, created=m.created, owned_by=m.owner) for m in services.store.list_models(owner)]
    shared = [
        Model(id=m.id, created=m.created, owned_by=m.owner) for m in Permissions(services.store).shared_with(owner)
    ]
    return ModelList(data=base + tuned + shared)


@router.get("/models/{model:path}")
def retrieve_model(model: str, services: ServicesDep, owner: OwnerDep) -> Model:
    resolved = resolve_callable(services.catalog, model, owner, fetch=False)
    if resolved.adapter is None:
        return Model(id=resolved.id, created=resolved.base.created, owned_by=BASE_OWNER)
    rec = services.store.find_model(owner, resolved.id)
    if rec is None:  # shared with this owner: reported as the sharer's
        rec = services.store.find_model(Permissions(services.store).sharer(resolved.id, owner) or owner, resolved.id)
    assert rec is not None
    return Model(id=rec.id, created=rec.created, owned_by=rec.owner)


@router.delete("/models/{model:path}")
def delete_model(model: str, services: ServicesDep, owner: OwnerDep) -> ModelDeleted:
    resolved = services.catalog.resolve(model, owner, fetch=False)
    if resolved.adapter is None:
        raise PermissionDenied(
            f"`{model}` is a base model and cannot be deleted through the API; only fine-tuned models can. "
            "To unregister a base model you added, run `selftune models rm NAME --local` on the server.",
            param="model",
            code="model_not_deletable",
        )
    unused = services.store.delete_model(owner, resolved.id)
    if unused:
        forget_adapter(services, unused)
    return ModelDeleted(id=resolved.id)


def forget_adapter(services: Services, key: str) -> None:
    """Free an adapter nothing needs any more: in the store, in this machine's cache, and in the jobs'
    folder (only ever inside it: the key comes from the database). Other machines' copies in their
    caches go as those fill up."""
    jobs_dir = services.settings.home / "jobs"
    folder = services.catalog.adapter_dir(key, fetch=False)
    if folder.resolve().is_relative_to(jobs_dir.resolve()):
        remove_tree(folder, jobs_dir)
    if not Path(key).is_absolute() and services.cache is not None:
        services.storage.delete(key)
        services.cache.drop(key)
