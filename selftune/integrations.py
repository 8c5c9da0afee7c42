"""A job's ``integrations``: checked when the job is created, handed to the recipe as it trains.

OpenAI's one integration type is Weights & Biases: ``{"type": "wandb", "wandb": {"project",
"name"?, "entity"?, "tags"?}}``. The recipe logs the job's metrics to that run
(``selftune.train.tracking``); here we only make sure it can, so a job never trains unlogged
because of a typo or a missing package.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from selftune.errors import InvalidRequest, PermissionDenied

WANDB_KEYS = ("project", "name", "entity", "tags")


def check(integrations: list[dict[str, Any]] | None, allowed_projects: str | None = None) -> None:
    """400 for an integration selftune cannot honour, naming what to change. ``allowed_projects`` is
    ``SELFTUNE_WANDB_PROJECTS`` on a server with API keys: the runs log with the operator's W&B
    credentials, so a tenant may log only to the projects the operator lists (``*``: any); None
    (local mode, one owner) allows any."""
    for i, item in enumerate(integrations or []):
        where = f"integrations[{i}]"
        if item.get("type") != "wandb":
            raise InvalidRequest(f"{where}.type must be 'wandb' (the one integration OpenAI offers)", param=where)
        spec = item.get("wandb")
        if not isinstance(spec, dict) or not isinstance(spec.get("project"), str) or not spec["project"]:
            raise InvalidRequest(f'{where}.wandb needs a "project" (the W&B project to log to)', param=where)
        if allowed_projects is not None and not _allowed(spec["project"], allowed_projects):
            raise PermissionDenied(
                f"{where}.wandb.project {spec['project']!r} is not one this server logs to: runs use the "
                "operator's W&B credentials, and the operator lists the projects keys may use in "
                "SELFTUNE_WANDB_PROJECTS",
                param=where,
                code="integration_not_allowed",
            )
        unknown = sorted(set(spec) - set(WANDB_KEYS))
        if unknown:
            raise InvalidRequest(f"{where}.wandb has unknown key(s) {', '.join(unknown)}", param=where)
        tags = spec.get("tags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise InvalidRequest(f"{where}.wandb.tags must be a list of strings", param=where)
        if importlib.util.find_spec("wandb") is None:
            raise InvalidRequest(
                f"{where} asks for Weights & Biases, but the wandb package is not installed on this server: "
                "install it with `pip install 'selftune[wandb]'` and restart, or leave integrations out",
                param=where,
                code="integration_unavailable",
            )


def _allowed(project: str, allowed: str) -> bool:
    names = {p.strip() for p in allowed.split(",") if p.strip()}
    return "*" in names or project in names


def wandb_run(integrations: list[dict[str, Any]] | None, job_id: str) -> dict[str, Any] | None:
    """The W&B run a job logs to (the recipe's ``TrainConfig.wandb``), or None. Named after the job
    unless the request names it, as OpenAI does; the job id is also the run id, so a resumed job
    continues the same run."""
    for item in integrations or []:
        if item.get("type") == "wandb":
            spec = item["wandb"]
            return {
                "project": spec["project"],
                "name": spec.get("name") or job_id,
                "entity": spec.get("entity"),
                "tags": list(spec.get("tags") or []),
                "id": job_id,
            }
    return None
