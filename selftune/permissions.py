"""Checkpoint permissions: a fine-tuned model (or one of its ``:ckpt-step-N`` checkpoints) shared
with another owner (OpenAI's ``/v1/fine_tuning/checkpoints/{model}/permissions``).

OpenAI shares a model with other *projects*; here a project is an owner, the name after a key in
``SELFTUNE_API_KEYS``. The owner a model is shared with can call it (chat, completions, responses,
batches, eval runs and graders' judges) and sees it in its model list, owned by the sharing owner;
nothing else of the sharer's: not its jobs, files, events or checkpoints, and it cannot delete,
export or train on the model. Only the model's owner grants, lists and revokes. Deleting the model
ends every grant with it (a grant names a model its owner no longer has).

Grants are rows of the ``objects`` table (kind ``ckpt_permission``, owner the sharer). A grant's id
starts with a digest of the model and one of the owner it is shared with, so whether a model is
shared with someone is one lookup by prefix, and the grants of a model are another.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Collection

from selftune.catalog import Catalog, Resolved
from selftune.errors import InvalidRequest, NotFound
from selftune.objects import ObjectStore
from selftune.schemas.fine_tuning import CheckpointPermission
from selftune.store import Store
from selftune.tables import ModelRecord, ObjectRecord

KIND = "ckpt_permission"
GRANTED = "granted"
"""A grant's one status (a revoked grant is deleted): grants have no lifecycle."""
WHAT = "checkpoint permission"
MOST_OWNERS = 10_000
"""More grants than a model can have (one per owner): a model's grants are read in one query."""


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _prefix(model_id: str, project_id: str = "") -> str:
    return "cp_" + _digest(model_id) + (_digest(project_id) if project_id else "")


def _permission(rec: ObjectRecord) -> CheckpointPermission:
    return CheckpointPermission(id=rec.id, created_at=rec.created_at, project_id=rec.data["project_id"])


class Permissions:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.objects: ObjectStore = store.objects

    def _owned_model(self, owner: str, model_id: str) -> None:
        """The model must be one of the caller's fine-tuned models (or checkpoints)."""
        if self.store.find_model(owner, model_id) is None:
            raise NotFound(
                f"No fine-tuned model or checkpoint {model_id!r} of yours to share. Give a fine-tuned model's "
                "id (GET /v1/models) or a checkpoint's fine_tuned_model_checkpoint "
                "(GET /v1/fine_tuning/jobs/ID/checkpoints).",
                param="fine_tuned_model_checkpoint",
                code="model_not_found",
            )

    def _grants(self, model_id: str, owner: str | None, project_id: str = "") -> list[ObjectRecord]:
        recs, _ = self.objects.children(
            KIND, owner, _prefix(model_id, project_id), limit=MOST_OWNERS, after=None, newest_first=False
        )
        # The digest makes a collision between two models' grants unlikely, not impossible.
        return sorted(
            (r for r in recs if r.data["model"] == model_id and (not project_id or r.data["project_id"] == project_id)),
            key=lambda r: r.data["order"],
        )

    def grant(
        self, owner: str, model_id: str, project_ids: list[str], owners: Collection[str]
    ) -> list[CheckpointPermission]:
        """Share ``model_id`` with each of ``project_ids`` (owners among ``owners``); a grant that
        exists already is returned as it is, not made twice."""
        self._owned_model(owner, model_id)
        if not project_ids:
            raise InvalidRequest("project_ids is empty: name at least one owner to share with", param="project_ids")
        for i, project in enumerate(project_ids):
            if project == owner:
                raise InvalidRequest(
                    f"project_ids[{i}] is you ({owner!r}): your models are always yours to call", param="project_ids"
                )
            if project not in owners:
                known = ", ".join(sorted(set(owners) - {owner})) or "none: without SELFTUNE_API_KEYS there is one owner"
                raise InvalidRequest(
                    f"project_ids[{i}]: no owner {project!r} on this server. A project here is an owner named in "
                    f"SELFTUNE_API_KEYS (KEY:OWNER); the others are: {known}",
                    param="project_ids",
                )
        out = []
        for project in dict.fromkeys(project_ids):
            existing = self._grants(model_id, owner, project)
            if existing:
                out.append(_permission(existing[0]))
                continue
            data = {"model": model_id, "project_id": project, "order": time.time_ns()}
            rec = ObjectRecord(
                _prefix(model_id, project) + secrets.token_hex(4), KIND, owner, int(time.time()), GRANTED, data
            )
            self.objects.insert(rec)
            out.append(_permission(rec))
        return out

    def page(
        self, owner: str, model_id: str, *, limit: int, after: str | None, ascending: bool, project_id: str | None
    ) -> tuple[list[CheckpointPermission], bool]:
        self._owned_model(owner, model_id)
        recs = self._grants(model_id, owner, project_id or "")
        if not ascending:
            recs.reverse()
        if after:
            ids = [r.id for r in recs]
            if after not in ids:
                raise InvalidRequest(f"Unknown cursor: this model has no permission {after!r}", param="after")
            recs = recs[ids.index(after) + 1 :]
        return [_permission(r) for r in recs[:limit]], len(recs) > limit

    def revoke(self, owner: str, model_id: str, permission_id: str) -> None:
        self._owned_model(owner, model_id)
        if not any(r.id == permission_id for r in self._grants(model_id, owner)):
            raise NotFound(
                f"No such {WHAT} of {model_id}: {permission_id}", param="permission_id", code="permission_not_found"
            )
        self.objects.delete(KIND, owner, permission_id, WHAT)

    def shared_with(self, owner: str) -> list[ModelRecord]:
        """Every model shared with ``owner`` that its sharer still has, oldest grant first. Grants
        are few (a model has one per owner), so all are read."""
        grants = [r for r in self.objects.in_status(KIND, GRANTED) if r.data["project_id"] == owner]
        found = (self.store.find_model(r.owner, r.data["model"]) for r in grants)
        return [m for m in found if m is not None]

    def sharer(self, model_id: str, owner: str) -> str | None:
        """Who shared ``model_id`` with ``owner``, if anyone did and still has the model."""
        for rec in self._grants(model_id, None, owner):
            if self.store.find_model(rec.owner, model_id) is not None:
                return rec.owner
        return None


def resolve_callable(catalog: Catalog, model_id: str, owner: str, *, fetch: bool = True) -> Resolved:
    """``catalog.resolve``, and beyond it the fine-tuned models other owners shared with ``owner``:
    what may be *called* (served, judged, evaluated); everything else resolves by ``catalog.resolve``."""
    try:
        return catalog.resolve(model_id, owner, fetch=fetch)
    except NotFound:
        sharer = Permissions(catalog.store).sharer(model_id, owner) if model_id.startswith("ft:") else None
        if sharer is None:
            raise
        return catalog.resolve(model_id, sharer, fetch=fetch)
