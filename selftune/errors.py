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
    ├── AuthenticationFailed        401 authentication_error
    ├── PermissionDenied            403 permission_error
    ├── NotFound                    404 invalid_request_error   (unknown or someone else's id)
    ├── Unavailable                 503 server_error            (model still loading; retry is useful)
    ├── VerificationFailed          500   export_verification_failed: an export that answers otherwise
    ├── MigrationProblem            500   a job ``selftune migrate`` cannot move on yet
    └── ServerFailed                500   a server started by ``selftune.live`` that never came up

User mistakes are never 409 or 5xx: the OpenAI SDK retries those, so a mistake would be resent.
"""

from __future__ import annotations

from typing import Any


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

    def __init__(self, message: str, budget: int) -> None:
        super().__init__(message)
        self.budget = budget


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


class Unavailable(SelftuneError):
    status_code = 503
    error_type = "server_error"


class VerificationFailed(SelftuneError):
    """The export does not answer as selftune does; the message has the numbers."""

    default_code = "export_verification_failed"


class MigrationProblem(SelftuneError):
    """A job cannot go on for now; the message says what to do. Recorded, and retried next run."""


class ServerFailed(SelftuneError):
    """A server started by ``selftune.live`` exited or never became healthy; the message ends with its log."""
