"""Shared wire pieces: the base classes. (The error envelope is ``errors.SelftuneError.to_dict``.)"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


def is_none(value: object) -> bool:
    """For optional fields that the official schema types as non-nullable: omit them, don't send null."""
    return value is None


class Response(BaseModel):
    """Base of every response body: exactly the declared fields, serialised as-is."""

    model_config = ConfigDict(extra="forbid")


class Request(BaseModel):
    """Base of every request body. Unknown keys are accepted and ignored: new SDK versions add
    parameters faster than servers learn them, and OpenAI ignores what it does not know."""

    model_config = ConfigDict(extra="allow")
