"""``python`` graders: untrusted source run in a separate, isolated process (``graders.sandbox``).

Isolation (Linux user namespaces, through util-linux's ``unshare``, no root needed):

- **network**: a network namespace of its own, with no interface up (not even loopback): every
  connection fails with "Network is unreachable", to the internet, this server and its database;
- **files**: the selftune home (every owner's files, models, the database) is covered by an empty
  tmpfs that the grader cannot unmount; its working directory, ``HOME`` and ``TMPDIR`` are a fresh
  temporary folder, removed afterwards; the environment holds nothing of the server's (no keys);
- **limits**: 2 GB of address space, 2 minutes of CPU, 1 GB per file written, no core files, and
  ``SELFTUNE_PYTHON_GRADER_TIMEOUT`` seconds of wall time (default 120, OpenAI's limit), after which
  its whole process group is killed.

What it can still reach: files outside the selftune home that the server's user may read (the
Python installation, system files) and write (with the per-file limit), and the CPU and memory of
this machine within those limits. It runs as the server's user, mapped to root inside its own user
namespace, which gives it no rights outside it. Where user namespaces are unavailable, python
graders are refused (``python_grader_server_error``), never run unisolated.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from selftune.errors import RateLimited

if TYPE_CHECKING:
    from selftune.config import Settings

SANDBOX = Path(__file__).with_name("sandbox.py")
MAX_SOURCE_BYTES = 256 * 1024
"""OpenAI's limit on a python grader's source."""


@dataclass
class PythonOutcome:
    reward: float = 0.0
    runtime_error: str | None = None
    """The grader's own failure (an exception, a non-number, past the time limit), with details."""
    server_error: str | None = None
    """Why the sandbox could not run it."""


class Slots:
    """How many python graders a server runs at once, in all and per owner, each in a thread of a
    pool of their own (so that graders that loop until their time limit leave the rest of the server
    its threads). Past a bound, a request someone waits on (``/graders/run``) is a 429 and
    background work (an eval run's items) waits for a slot."""

    WAIT_S = 0.2

    def __init__(self, total: int, per_owner: int) -> None:
        self.total, self.per_owner = total, min(per_owner, total)
        self.pool = ThreadPoolExecutor(total, thread_name_prefix="python-grader")
        self.running: Counter[str] = Counter()
        self.lock = threading.Lock()

    def _take(self, owner: str) -> str | None:
        """Take a slot for ``owner``; or, when none is free, say why not."""
        with self.lock:
            if self.running.total() >= self.total:
                return f"{self.total} python graders are running on this server (SELFTUNE_MAX_PYTHON_GRADERS)"
            if self.running[owner] >= self.per_owner:
                return f"{self.per_owner} of yours are running (SELFTUNE_MAX_PYTHON_GRADERS_PER_OWNER)"
            self.running[owner] += 1
            return None

    async def run(self, owner: str, wait: bool, grader: Callable[[], PythonOutcome]) -> PythonOutcome:
        while (why := self._take(owner)) is not None:
            if not wait:
                raise RateLimited(f"Too many python graders at once: {why}.", retry_after=1, param="grader")
            await asyncio.sleep(self.WAIT_S)
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, grader)
        finally:
            with self.lock:
                self.running[owner] -= 1

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def run(
    source: str, sample: dict[str, Any], item: dict[str, Any], *, timeout: float, hidden: list[Path]
) -> PythonOutcome:
    unshare = shutil.which("unshare")
    if unshare is None:
        return PythonOutcome(server_error="sandbox_unavailable: util-linux's unshare is not installed")
    with tempfile.TemporaryDirectory(prefix="selftune-grader-") as work:
        command = [unshare, "--user", "--map-root-user", "--net", "--mount", "--"]
        command += [sys.executable, "-I", str(SANDBOX), work, *(str(h.resolve()) for h in hidden)]
        env = {"PATH": os.defpath, "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8"}
        proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=work,
            env=env,
            start_new_session=True,
        )
        job = json.dumps({"source": source, "sample": sample, "item": item}).encode()
        try:
            _, err = proc.communicate(job, timeout=timeout)
        except subprocess.TimeoutExpired:
            return PythonOutcome(runtime_error=f"the grader was stopped after {timeout:g} s (the time limit)")
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # and whatever it started
            proc.wait()
        result = Path(work) / "result.json"
        if proc.returncode == 70 or (proc.returncode != 0 and not result.exists()):
            reason = err.decode(errors="replace").strip()[-500:] or f"exit status {proc.returncode}"
            if proc.returncode < 0:
                return PythonOutcome(runtime_error=f"the grader was killed by signal {-proc.returncode}")
            return PythonOutcome(server_error=f"sandbox_unavailable: {reason}")
        try:
            with result.open("rb") as f:
                got = json.loads(f.read(1_000_000))
        except (OSError, ValueError):
            return PythonOutcome(runtime_error="the grader ended without a result (did it exit?)")
    if isinstance(got, dict) and isinstance(got.get("reward"), float):
        return PythonOutcome(reward=got["reward"])
    error = got.get("error") if isinstance(got, dict) else None
    return PythonOutcome(runtime_error=str(error or "the grader wrote no reward"))


def hidden_folders(settings: Settings) -> list[Path]:
    """What a python grader must not see: the home, and a shared folder holding every owner's files
    (the server's graders and a reinforcement job's, whose worker must not import the server's modules)."""
    hidden = [settings.home]
    if (settings.storage_url or "").startswith("file:"):
        hidden.append(Path(urlparse(settings.storage_url or "").path))
    return hidden
