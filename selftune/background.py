"""A server's background runner for one kind of object in the ``objects`` table (batches, eval
runs): the claim loop, written once.

It claims the oldest object of its kind in the machine's claimed statuses that nobody holds (or
whose lease lapsed: ``selftune.claims``), holds the lease while ``work`` runs, and lets it go after;
a holder of this host that died is freed at once. A move made meanwhile by someone else (a cancel
during work) is logged and the next object is claimed; an error nothing expects hands the object to
``give_up`` (which fails it with the reason) so the next one runs; a database that is away for a
moment only delays the object. All of it is background work that yields to interactive requests.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress
from typing import Any

from sqlalchemy.exc import DBAPIError

from selftune.claims import LeaseKeeper, holder_id
from selftune.errors import InvalidStatus
from selftune.lifecycle import Machine
from selftune.services import Services
from selftune.serving.admission import BACKGROUND

POLL_S = 0.5
"""How often an idle runner looks for work."""


class ObjectRunner:
    kind: str
    """The ``objects`` table's kind this runner claims (``batch``, ``eval.run``)."""
    machine: Machine[Any, Any]
    log: logging.Logger

    def __init__(self, services: Services) -> None:
        self.services = services
        self.holder = holder_id()
        self.lease_seconds = services.settings.lease_seconds
        self.leases = LeaseKeeper(services.store.claims, "objects", self.holder, self.lease_seconds)
        self.task: asyncio.Task[None] | None = None

    async def work(self, owner: str, data: dict[str, Any]) -> None:
        """Take the claimed object (its stored fields) as far as it goes."""
        raise NotImplementedError

    def give_up(self, object_id: str, error: Exception) -> None:
        """Fail the object with the reason (an error nothing expected)."""
        raise NotImplementedError

    def start(self) -> None:
        self.leases.start()
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Work in flight is dropped unwritten; whoever takes the object next does it again."""
        if self.task is not None:
            self.task.cancel()
            with suppress(asyncio.CancelledError):
                await self.task
        self.leases.stop()

    async def _loop(self) -> None:
        BACKGROUND.set(True)  # this task's requests (and the tasks it starts) yield to interactive ones
        claims = self.services.store.claims
        statuses = self.machine.claimed
        while True:
            claimed = None
            try:
                await asyncio.to_thread(claims.release_dead, self.kind, statuses, self.holder)
                claimed = await asyncio.to_thread(
                    claims.claim_object, self.kind, statuses, self.holder, self.lease_seconds
                )
                if claimed is not None:
                    self.log.info("%s %s claimed by %s", self.kind, claimed.id, self.holder)
                    self.leases.hold(claimed.id)
                    await self.work(claimed.owner, claimed.data)
            except asyncio.CancelledError:
                raise
            except InvalidStatus as e:  # cancelled (say) while it was worked on: the next claim goes on
                self.log.info("%s %s moved meanwhile: %s", self.kind, claimed.id if claimed else "?", e.message)
            except DBAPIError:  # the database is away for a moment: the object is taken again next time
                self.log.exception("%s runner: database error", self.kind)
            except Exception as e:  # this object cannot be processed: it fails with the reason, the next one runs
                if claimed is not None:
                    await asyncio.to_thread(self.give_up, claimed.id, e)
                else:
                    self.log.exception("%s runner error", self.kind)
            finally:
                if claimed is not None:  # finished (its last move let it go), or to be taken again
                    self.leases.drop(claimed.id)
                    await asyncio.to_thread(claims.release, "objects", self.holder, claimed.id)
            if claimed is None:
                await asyncio.sleep(POLL_S)
