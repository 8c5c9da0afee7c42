"""Models: ``Model``, the model list and the delete result (openai ``types/model.py``)."""

from __future__ import annotations

from typing import Literal

from selftune.schemas.common import Response


class Model(Response):
    id: str
    object: Literal["model"] = "model"
    created: int
    """Unix seconds. Note the name: ``created``, not ``created_at``."""
    owned_by: str


class ModelList(Response):
    object: Literal["list"] = "list"
    data: list[Model]


class ModelDeleted(Response):
    id: str
    object: Literal["model"] = "model"
    deleted: bool = True
