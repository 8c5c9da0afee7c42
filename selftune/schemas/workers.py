"""Workers (a selftune extension, ``GET /v1/workers``): the training workers running on one database."""

from __future__ import annotations

from typing import Literal

from selftune.schemas.common import Response


class Worker(Response):
    id: str
    """``host@namespace:pid:random``, as in a job's claim."""
    object: Literal["worker"] = "worker"
    host: str
    device: str
    """``cpu`` or ``cuda``."""
    gpus: int
    memory_bytes: int
    """What it offers a job (``SELFTUNE_WORKER_MEMORY_BYTES``, or measured free memory less headroom)."""
    slots: int
    nproc: int
    """Processes it trains each job on (``--nproc-per-node``)."""
    group: str | None
    """The group of workers it trains each job with (``--group``), if any."""
    nnodes: int
    """The machines of that group (``--nnodes``)."""
    started_at: int
    last_seen_at: int
    """By the database's clock."""
    active_jobs: int
    """Jobs it trains now, every owner's."""
    jobs: list[str]
    """The ones among them that are the caller's."""


class WorkerList(Response):
    object: Literal["list"] = "list"
    data: list[Worker]
