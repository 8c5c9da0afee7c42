"""``/v1/workers`` (a selftune extension, for operators): the training workers on this database.

Every server lists the same workers, whatever machine each runs on (``selftune.workers``). A
caller sees every worker and how many jobs it trains, but only its own jobs' ids: which jobs other
owners run is theirs.
"""

from __future__ import annotations

from fastapi import APIRouter

from selftune.schemas.workers import Worker, WorkerList
from selftune.server.deps import OwnerDep, ServicesDep
from selftune.server.edge import Route
from selftune.statuses import JOBS
from selftune.workers import STALE_LEASES

router = APIRouter(tags=["workers"], route_class=Route)


@router.get("/workers")
def list_workers(services: ServicesDep, owner: OwnerDep) -> WorkerList:
    rows = services.store.list_workers(seen_within=STALE_LEASES * services.settings.lease_seconds)
    mine = {job.id for job in services.store.jobs_in(*JOBS.claimed) if job.owner == owner}
    return WorkerList(
        data=[
            Worker(
                id=w.id,
                host=w.host,
                device=w.device,
                gpus=w.gpus,
                memory_bytes=w.memory_bytes,
                slots=w.slots,
                nproc=w.nproc,
                group=w.group_name,
                nnodes=w.nnodes,
                started_at=w.started_at,
                last_seen_at=int(w.last_seen),
                active_jobs=len(w.jobs),
                jobs=[j for j in w.jobs if j in mine],
            )
            for w in rows
        ]
    )
