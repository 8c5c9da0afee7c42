"""Every exception selftune raises, and the HTTP status each one stands for: the one tree.

Every layer (store, catalog, data, engines, recipe, export) raises these; the server converts them
to the OpenAI error envelope in exactly one place (``server.app``), the CLI turns them into clean
one-line messages (``cli.common.friendly_errors``), and the training and export processes turn
them into the ``code`` and message their parent reports. Nothing converts them anywhere else.

    SelftuneError                   500 server_error
    ├── InvalidRequest              400 invalid_request_error   (bad input: always fixable by the user)
    │   ├── InvalidFile             400   a file, with every problem and its line number
    │   ├── InvalidStatus           400   invalid_<object>_status: a move the object's status machine lacks
    │   ├── Unsupported             400   what selftune cannot do with this model, template or file
    │   │   ├── TemplateError             a chat template that cannot be trained on or stopped with
    │   │   ├── ConversionError           a model or adapter llama.cpp cannot be given
    │   │   └── TemplateNotExpressible    a chat template an Ollama Modelfile cannot express
    │   ├── PrepareError            400   a record ``selftune prepare`` cannot convert
    │   ├── InsufficientStorage     400   insufficient_storage: too little disk for an export
    │   ├── InsufficientMemory      400   insufficient_memory: a job that fits no memory plan
    │   └── QuantizationUnavailable 400   qlora_unavailable: a 4-bit base this machine cannot load
    │   ├── InvalidJSON             400   a body or line that is not JSON, or JSON past the limits
    │   └── TooLarge                413   request_too_large: a body over the server's limit
    ├── AuthenticationFailed        401 authentication_error
    ├── PermissionDenied            403 permission_error
    ├── NotFound                    404 invalid_request_error   (unknown or someone else's id)
    ├── MisdirectedRequest          421 invalid_request_error   (local mode: a Host that is not loopback)
    ├── RateLimited                 429 rate_limit_error        (retry after ``retry_after`` seconds)
    ├── Unavailable                 503 server_error            (model still loading; retry is useful)
    │   └── StorageUnavailable      503   storage_unavailable: the object store is unreachable, or an
    │                                     object's bytes are not the ones stored (SHA-256)
    ├── VerificationFailed          500   export_verification_failed: an export that answers otherwise
    ├── MigrationProblem            500   a job ``selftune migrate`` cannot move on yet
    └── ServerFailed                500   a server started by ``selftune.live`` that never came up

User mistakes are never 409 or 5xx: the OpenAI SDK retries those, so a mistake would be resent.
A 429 is retried by the SDKs after its ``Retry-After``: it is how the server says "not now" under load.
"""

from __future__ import annotations

import logging
from typing import Any

from selftune.ids import random_id


def internal_error(exc: BaseException, log: logging.Logger, what: str) -> SelftuneError:
    """What a client is told of an error the server did not expect: no exception text (it can hold
    paths, a database's address), but an id under which ``log`` has the whole of it."""
    error_id = random_id("err_", 16)
    log.error("%s (error id %s)", what, error_id, exc_info=exc)
    return SelftuneError(
        f"The server had an error while processing your request (error id {error_id}, in the server's log).",
        code="server_error",
    )


class SelftuneError(Exception):
    """Base class. ``param`` names the offending request field; ``code`` is a stable machine key."""

    status_code = 500
    error_type = "server_error"
    default_code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code

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


class InvalidStatus(InvalidRequest):
    """A move an object's status machine does not have from its status (resuming a running job,
    cancelling a finished batch); ``selftune.lifecycle.Machine.move`` raises it."""

    def __init__(self, message: str, *, param: str, code: str, status: str, action: str) -> None:
        super().__init__(message, param=param, code=code)
        self.status = status
        self.action = action


class InvalidJSON(InvalidRequest):
    """A body or a line that is not JSON, or is nested too deep or holds a number too long to read."""

    default_code = "invalid_json"

    def __init__(self, message: str, *, reason: str | None = None, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.reason = reason or message
        """The problem alone, without the place (``safejson.loads`` words ``message`` as "WHERE is REASON")."""


class TooLarge(InvalidRequest):
    status_code = 413
    default_code = "request_too_large"


class Unsupported(InvalidRequest):
    """What selftune cannot do with this model, template or file; the message says what would work."""


class TemplateError(Unsupported):
    """The model's chat template cannot be trained on or stopped with; the message says how to fix it."""

    default_code = "unsupported_chat_template"


class ConversionError(Unsupported):
    """A model or adapter cannot be expressed for llama.cpp (an unsupported family, tokenizer or layer)."""

    default_code = "conversion_unsupported"


class TemplateNotExpressible(Unsupported):
    """The chat template cannot be written as an Ollama template."""

    default_code = "export_unsupported"


class PrepareError(InvalidRequest):
    """A record of ``selftune prepare``'s input cannot be converted; the message names where."""

    default_code = "invalid_record"


class InsufficientStorage(InvalidRequest):
    default_code = "insufficient_storage"


class InsufficientMemory(InvalidRequest):
    """The job cannot fit its budget even one example at a time with gradient checkpointing (and a
    4-bit base where that is allowed). Before training, it fails the job with this code."""

    default_code = "insufficient_memory"

    def __init__(self, message: str, budget: int, need: int = 0) -> None:
        super().__init__(message)
        self.budget = budget
        self.need = need
        """The least the most frugal plan needs."""


class QuantizationUnavailable(InvalidRequest):
    """The model's registration asks for a 4-bit base, which this machine cannot give it."""

    default_code = "qlora_unavailable"


class AuthenticationFailed(SelftuneError):
    status_code = 401
    error_type = "authentication_error"


class PermissionDenied(SelftuneError):
    status_code = 403
    error_type = "permission_error"


class NotFound(SelftuneError):
    status_code = 404
    error_type = "invalid_request_error"


class MisdirectedRequest(SelftuneError):
    """In local mode the server answers only requests addressed to a loopback name: a web page that
    rebinds its own domain to 127.0.0.1 (DNS rebinding) sends its own name as Host, and is refused."""

    status_code = 421
    error_type = "invalid_request_error"
    default_code = "misdirected_request"


class RateLimited(SelftuneError):
    """Too much at once (for this owner, or for the server): try again after ``retry_after`` seconds."""

    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.retry_after = retry_after


class Unavailable(SelftuneError):
    status_code = 503
    error_type = "server_error"


class StorageUnavailable(Unavailable):
    """The object store (``SELFTUNE_STORAGE_URL``) could not be reached, or gave bytes whose SHA-256
    is not the one stored with them; the message names the object and the store."""

    default_code = "storage_unavailable"


class VerificationFailed(SelftuneError):
    """The export does not answer as selftune does; the message has the numbers."""

    default_code = "export_verification_failed"


class MigrationProblem(SelftuneError):
    """A job cannot go on for now; the message says what to do. Recorded, and retried next run."""


class ServerFailed(SelftuneError):
    """A server started by ``selftune.live`` exited or never became healthy; the message ends with its log."""
