"""Shared wire pieces: the base classes. (The error envelope is ``errors.SelftuneError.to_dict``.)"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from selftune.errors import InvalidRequest


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


def invalid_request(errors: Sequence[Any]) -> InvalidRequest:
    """Pydantic's errors about a request body as one 400 (OpenAI answers 400, never 422), naming the
    first offending parameter; used at the HTTP edge and for each line of a batch."""
    # For "auto" | number fields pydantic reports one error per union member; the number's
    # constraint ("greater than or equal to 1") says more than "should be 'auto'".
    first: dict[str, Any] = min(errors, key=lambda e: e.get("type") == "literal_error", default={})
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path") and not _union_tag(p)]
    param = ".".join(loc) or None
    rest = [e for e in errors if e.get("type") != "literal_error" or e is first]
    if first.get("type") == "json_invalid":
        message = "We could not parse the JSON body of your request. Send valid JSON."
    elif first.get("type") == "missing":
        message = f"Missing required parameter: '{param}'."
    else:
        message = f"Invalid value for '{param}': {first.get('msg', 'invalid')}."
    if len(rest) > 1:
        message += f" ({len(rest) - 1} more problem(s) in the request.)"
    return InvalidRequest(message, param=param)


def _union_tag(part: object) -> bool:
    """Pydantic's names for union members in an error location (``literal['auto']``, ``int``)."""
    return isinstance(part, str) and (
        "[" in part
        or part in ("int", "float", "str", "bool", "constrained-int", "constrained-float", "constrained-str")
    )


class ErrorObject(Response):
    """What every error answer holds (``errors.SelftuneError.to_dict``), as the served OpenAPI
    document declares it for every 4XX and 5XX answer, so that clients and the fuzzing suite can check it."""

    message: str
    type: str
    param: str | None
    code: str | None
    problems: list[dict[str, Any]] | None = None
    """A file that failed validation: every problem, with its line."""


class ErrorResponse(Response):
    error: ErrorObject


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorResponse, "description": "The request cannot be answered as sent; the error says why"},
    "5XX": {"model": ErrorResponse, "description": "The server failed; the message carries an error id for its log"},
}
