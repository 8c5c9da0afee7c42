"""Crash points: the places where a SIGKILL would leave the most to recover, named, so that tests can
kill a real server at exactly that step and check that nothing is lost, half-written or answered twice.

``crash_point("upload.registered")`` does nothing unless the environment variable
``SELFTUNE_CRASH_AT`` names that point; then it sends SIGKILL to its own process (no clean-up, no
``finally``, no flush: what a power cut or the out-of-memory killer does). The points:

- ``upload.part``: a part's bytes are in a temporary file, not yet in the upload;
- ``file.committed``: a file's bytes are in place under its id, its row not yet written;
- ``upload.registered``: a completed upload's file is registered, the upload not yet ``completed``;
- ``job.finished``: the training process ended with its model, the job not yet concluded;
- ``job.results``: the job's result files are registered, the job not yet ``succeeded``;
- ``job.evaluated``: the job's evaluation is an eval of the Evals API, the job not yet ``succeeded``;
- ``export.built``: the export is built and verified, not yet ``succeeded``;
- ``batch.output``: a batch's output and error files are registered, the batch not yet ended.
"""

from __future__ import annotations

import os
import signal

POINTS = frozenset(
    {
        "upload.part",
        "file.committed",
        "upload.registered",
        "job.finished",
        "job.results",
        "job.evaluated",
        "export.built",
        "batch.output",
    }
)


def crash_point(name: str) -> None:
    assert name in POINTS, name
    if os.environ.get("SELFTUNE_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
