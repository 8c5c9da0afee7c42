"""Workers that train one job together on several machines: a group, and the rendezvous of each job.

``selftune worker --nnodes N --group NAME`` on each of N machines makes a group (the workers table
records each one's group and N). The database is all they coordinate through:

- The group's **head** is its earliest-started live worker. Only the head claims jobs, and only while
  the group has N live workers and none of the others is busy, so that no machine waits for one
  that trains something else.
- Having claimed a job, the head **opens its rendezvous**: a row with the endpoint where torchrun's
  c10d store will listen (the head's ``SELFTUNE_WORKER_ADDRESS`` and a free port), N, the processes
  per machine, and an id for this attempt. It then runs the launch as the head: its lowest rank is
  the job's main rank, which writes the events, checkpoints and state the head relays.
- Every other member **takes one of the N - 1 seats** (a compare-and-set on the row) and runs the
  same launch as a member, in a folder of its own home, with the job's files and base model from
  the store.
- The head **closes** the row when its run ends, whatever the way. A member stops its processes when
  the row it joined is gone or names another attempt.

Nothing waits forever. A member that dies takes its ranks with it (they die with their parent), and
the head's ranks fail at their next collective, so the head's run ends and the job fails with the
log; torchrun gives up on a rendezvous that has not filled in ``launch.JOIN_TIMEOUT_SECONDS``.
"""

from __future__ import annotations

import secrets
import socket
from dataclasses import dataclass

from sqlalchemy import Engine, delete, insert, select, update

from selftune.tables import WorkerRecord, record, rendezvous
from selftune.train.protocol import Launch


@dataclass(frozen=True)
class Rendezvous:
    """Where the machines of a group meet to train one job (a row of ``rendezvous``)."""

    job_id: str
    group_name: str
    endpoint: str
    rdzv_id: str
    nnodes: int
    nproc: int
    seats: int
    """Members that have joined (the head excluded)."""
    members: list[str]

    def note(self) -> str:
        """For the error of a run that crashed."""
        return f" (group {self.group_name} trained it on {self.nnodes} machines: one that stops ends the run)"

    def launch(self, *, member: bool) -> Launch:
        return Launch(self.nproc, self.nnodes, self.endpoint, self.rdzv_id, member)


class Groups:
    """The rendezvous table's queries."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def open(self, job_id: str, group: str, address: str, nnodes: int, nproc: int) -> Rendezvous:
        """A new attempt at ``job_id`` for ``group``, at a free port of ``address`` (this machine's)."""
        row = Rendezvous(
            job_id, group, f"{address}:{free_port()}", f"{job_id}-{secrets.token_hex(4)}", nnodes, nproc, 0, []
        )
        with self.engine.begin() as c:
            c.execute(delete(rendezvous).where(rendezvous.c.job_id == job_id))
            c.execute(insert(rendezvous).values(**row.__dict__))
        return row

    def take_seat(self, group: str, worker_id: str) -> Rendezvous | None:
        """A seat at a rendezvous of ``group`` that still has one, now this worker's; None if none."""
        with self.engine.begin() as c:
            rows = c.execute(select(rendezvous).where(rendezvous.c.group_name == group)).all()
        for row in (record(Rendezvous, r) for r in rows):
            if row.seats >= row.nnodes - 1 or worker_id in row.members:
                continue
            with self.engine.begin() as c:
                took = c.execute(
                    update(rendezvous)
                    .where(rendezvous.c.rdzv_id == row.rdzv_id, rendezvous.c.seats == row.seats)
                    .values(seats=row.seats + 1, members=[*row.members, worker_id])
                ).rowcount
            if took:
                return row
        return None

    def get(self, job_id: str) -> Rendezvous | None:
        with self.engine.begin() as c:
            row = c.execute(select(rendezvous).where(rendezvous.c.job_id == job_id)).first()
        return record(Rendezvous, row) if row else None

    def close(self, rdzv_id: str) -> None:
        with self.engine.begin() as c:
            c.execute(delete(rendezvous).where(rendezvous.c.rdzv_id == rdzv_id))


def role(me: WorkerRecord, live: list[WorkerRecord]) -> tuple[bool, bool]:
    """(whether this worker is its group's head, whether the group may claim a job now)."""
    group = [w for w in live if w.group_name == me.group_name and w.nnodes == me.nnodes] or [me]
    if all(w.id != me.id for w in group):
        group.append(me)
    head = min(group, key=lambda w: (w.started_at, w.id))
    idle = all(not w.jobs for w in group if w.id != me.id)
    return head.id == me.id, head.id == me.id and len(group) >= me.nnodes and idle


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])
