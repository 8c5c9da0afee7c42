"""The exceptions selftune raises, and the HTTP status each one stands for.

Every layer (store, catalog, data, engine) raises these; the server converts them to the OpenAI
error envelope in exactly one place (``server.app``), and the CLI turns them into clean messages.

    SelftuneError                 500 server_error
    ├── InvalidRequest            400 invalid_request_error   (bad input: always fixable by the user)
    │   └── InvalidFile           400 invalid_request_error   (a file with line-numbered problems)
    ├── AuthenticationFailed      401 authentication_error
    ├── PermissionDenied          403 permission_error
    ├── NotFound                  404 invalid_request_error   (unknown or someone else's id)
    └── Unavailable               503 server_error            (model still loading; retry is useful)

User mistakes are never 409 or 5xx: the OpenAI SDK retries those, so a mistake would be resent.
"""

from __future__ import annotations

from typing import Any


class SelftuneError(Exception):
    """Base class. ``param`` names the offending request field; ``code`` is a stable machine key."""

    status_code = 500
    error_type = "server_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def to_dict(self) -> dict[str, Any]:
        return {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}


class InvalidRequest(SelftuneError):
    status_code = 400
    error_type = "invalid_request_error"


class InvalidFile(InvalidRequest):
    """A file failed validation. ``problems`` holds every problem, each with its line number."""

    def __init__(self, message: str, problems: list[dict[str, Any]], *, param: str | None = "file") -> None:
        super().__init__(message, param=param, code="invalid_file_format")
        self.problems = problems

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "problems": self.problems}


class AuthenticationFailed(SelftuneError):
    status_code = 401
    error_type = "authentication_error"


class PermissionDenied(SelftuneError):
    status_code = 403
    error_type = "permission_error"


class NotFound(SelftuneError):
    status_code = 404
    error_type = "invalid_request_error"


class Unavailable(SelftuneError):
    status_code = 503
    error_type = "server_error"
