"""A selftune server in a child process on 127.0.0.1, for tests, benchmarks and scripts.

``LiveServer(home, env).start()`` runs ``python -m selftune serve`` on a free loopback port with
its own ``SELFTUNE_HOME``, waits until ``/health`` answers, and hands out ``openai`` clients for it.
The test suite and ``make bench`` both use this one helper, so they start servers the same way.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai

from selftune.errors import ServerFailed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveServer:
    home: Path
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment (``SELFTUNE_*`` settings) on top of this process's."""
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @property
    def log(self) -> str:
        path = self.home / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, timeout: float = 300, *, keep_port: bool = False) -> LiveServer:
        """Start on a free port, or on ``port`` with ``keep_port`` (a restart clients must find again)."""
        if not (keep_port and self.port):
            self.port = free_port()
        self.home.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "SELFTUNE_HOME": str(self.home), "PYTHONUNBUFFERED": "1", **self.env}
        with (self.home / "server.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "selftune", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerFailed(f"server exited with {self.proc.returncode}:\n{self.log[-4000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise ServerFailed(f"server did not become healthy in {timeout}s:\n{self.log[-4000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                # Stuck: its threads' stacks go to its log (``selftune serve`` registers SIGUSR1) first.
                self.proc.send_signal(signal.SIGUSR1)
                time.sleep(1)
                self.proc.kill()
                self.proc.wait()

    def client(self, api_key: str = "sk-test", timeout: float = 120) -> openai.OpenAI:
        """The real SDK, without retries: a test or benchmark must see the first answer."""
        return openai.OpenAI(base_url=self.base_url, api_key=api_key, max_retries=0, timeout=timeout)

    def health(self) -> dict[str, Any]:
        return httpx.get(self.url + "/health", timeout=5).json()  # type: ignore[no-any-return]

    def peak_rss_mb(self) -> float:
        """The server process's peak resident memory so far (Linux)."""
        if self.proc is None:
            return float("nan")
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")
