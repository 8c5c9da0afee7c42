"""The one pattern every long-running object follows: jobs, batches, uploads, exports and eval
runs.

Each kind of object has

- a ``StrEnum`` of statuses and one of actions, and a ``Machine``: the table of ``Transition``s
  (from a status, an action leads to a status, optionally with the event it adds), its final
  statuses, and the statuses in which a process holds a *claim* on it (``claimed``). The machines
  themselves are written down in ``selftune.statuses``, and nowhere else;
- one ``Machine.apply``: the move is looked up in the table (a move it lacks raises
  ``InvalidStatus``, a 400 that says which statuses allow it) and written with a compare-and-set on
  the status the move started from; if the object moved meanwhile (a cancel racing a finish, two
  servers claiming one batch) it is read again and the move decided again from where it is now, so
  exactly one of any number of racing processes wins;
- typed records: ``JobRecord`` for jobs (``selftune.jobs`` moves them), and for the smaller kinds a
  pydantic model kept whole in the ``objects`` table, reached through ``Objects`` below;
- claims with leases (``selftune.claims``): whatever works on an object in the background claims it
  first, renews the lease while it works, and another process takes over once it lapses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, Protocol, Self, TypeVar

from selftune.errors import InvalidStatus
from selftune.ids import now
from selftune.objects import ObjectStore
from selftune.tables import ObjectRecord

S = TypeVar("S", bound=StrEnum)
A = TypeVar("A", bound=StrEnum)
R = TypeVar("R")


@dataclass(frozen=True)
class Transition(Generic[S, A]):
    source: S
    action: A
    target: S
    message: str | None = None
    """The event this move adds (jobs: in OpenAI's wording), if any."""


class Machine(Generic[S, A]):
    """One kind of object's statuses, actions and moves."""

    def __init__(
        self,
        name: str,
        plural: str,
        param: str,
        statuses: type[S],
        actions: type[A],
        transitions: Iterable[Transition[S, A]],
        terminal: Iterable[S],
        claimed: Iterable[S] = (),
        past: dict[A, str] | None = None,
    ) -> None:
        self.name = name
        """The object's name in messages (``job``, ``batch``), and in the error code ``invalid_<name>_status``."""
        self.plural = plural
        self.param = param
        """The request parameter an invalid move blames (the object's id)."""
        self.statuses = statuses
        self.actions = actions
        self.transitions = tuple(transitions)
        self.terminal = frozenset(terminal)
        self.unfinished = frozenset(statuses) - self.terminal
        self.claimed = frozenset(claimed)
        """Statuses in which a process works on the object, holding a claim with a lease."""
        self._past = past or {}
        self._table = {(t.source, t.action): t for t in self.transitions}
        assert len(self._table) == len(self.transitions), f"{name}: two moves for one (status, action)"

    def move(self, status: str, action: A, object_id: str) -> Transition[S, A]:
        """The move ``action`` makes from ``status``, or ``InvalidStatus`` naming where it is allowed."""
        move = self._table.get((self.statuses(status), action))
        if move is None:
            allowed = self.sources(action)
            where = " or ".join(allowed) if len(allowed) < 3 else "unfinished"
            verb = self._past.get(action, f"moved by {action.value!r}")
            raise InvalidStatus(
                f"{self.name.capitalize()} {object_id} is {status}, so it cannot be {verb}: only {where} "
                f"{self.plural} can.",
                param=self.param,
                code=f"invalid_{self.name}_status",
                status=status,
                action=action.value,
            )
        return move

    def sources(self, action: A) -> list[str]:
        """The statuses ``action`` can move an object from (what a client enables a button for)."""
        return sorted(t.source.value for t in self.transitions if t.action == action)

    def apply(
        self,
        current: R,
        action: A,
        *,
        status: Callable[[R], str],
        key: Callable[[R], str],
        write: Callable[[R, Transition[S, A]], R | None],
        reread: Callable[[R], R],
    ) -> R:
        """Make ``action`` on ``current``: ``write`` does the compare-and-set of the move (returning
        the moved object, or None when the object had moved meanwhile); then it is read again and the
        move decided again from where it is now."""
        while True:
            moved = write(current, self.move(status(current), action, key(current)))
            if moved is not None:
                return moved
            current = reread(current)

    def describe(self) -> dict[str, Any]:
        """The machine for clients (the dashboard): every status, the final ones, the ones with work
        under way, for each action the statuses it can be made from, and where each action that
        always leads to the same status leads."""
        targets = {a: {t.target.value for t in self.transitions if t.action == a} for a in self.actions}
        return {
            "statuses": [s.value for s in self.statuses],
            "terminal": sorted(s.value for s in self.terminal),
            "claimed": sorted(s.value for s in self.claimed),
            "actions": {a.value: self.sources(a) for a in self.actions},
            "targets": {a.value: t.pop() for a, t in targets.items() if len(t) == 1},
        }


class Stored(Protocol):
    """An object kept whole in the ``objects`` table: a pydantic model with an id and a status."""

    @property
    def id(self) -> str: ...

    @property
    def status(self) -> StrEnum: ...

    @classmethod
    def model_validate(cls, obj: Any) -> Self: ...

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self: ...

    def model_dump(self, *, mode: str = "python") -> dict[str, Any]: ...


T = TypeVar("T", bound=Stored)


@dataclass(frozen=True)
class Owned(Generic[T]):
    """An object with its owner (whose models, files and limits its background work uses)."""

    owner: str
    obj: T


class Objects(Generic[T]):
    """One kind of object in the ``objects`` table (a stored response, a batch, an upload, an export):
    read and written as its pydantic model, and moved only along its machine."""

    def __init__(
        self,
        objects: ObjectStore,
        kind: str,
        model: type[T],
        machine: Machine[Any, Any] | None,
        what: str,
        *,
        stamp: bool = False,
    ) -> None:
        self.store, self.kind, self.model, self.machine, self.what = objects, kind, model, machine, what
        self.stamp = stamp
        """Each move also sets the object's ``<status>_at`` (Unix seconds), as a batch's fields are."""

    def insert(self, owner: str, obj: T) -> T:
        self.store.insert(ObjectRecord(obj.id, self.kind, owner, now(), obj.status.value, _dump(obj)))
        return obj

    def get(self, owner: str | None, object_id: str) -> T:
        """An owner's object (``owner=None``: a background runner, which sees every owner's)."""
        return self._load(self.store.get(self.kind, owner, object_id, self.what))

    def owned(self, object_id: str) -> Owned[T]:
        rec = self.store.get(self.kind, None, object_id, self.what)
        return Owned(rec.owner, self._load(rec))

    def page(self, owner: str, *, limit: int, after: str | None, oldest_first: bool = False) -> tuple[list[T], bool]:
        recs, more = self.store.page(self.kind, owner, limit=limit, after=after, oldest_first=oldest_first)
        return [self._load(r) for r in recs], more

    def children(
        self,
        owner: str | None,
        prefix: str,
        *,
        limit: int,
        after: str | None,
        newest_first: bool,
        status: str | None = None,
    ) -> tuple[list[T], bool]:
        """One page of the objects whose ids start with ``prefix`` (``ObjectStore.children``)."""
        recs, more = self.store.children(
            self.kind, owner, prefix, limit=limit, after=after, newest_first=newest_first, status=status
        )
        return [self._load(r) for r in recs], more

    def in_status(self, *statuses: StrEnum) -> list[Owned[T]]:
        """Every owner's objects in these statuses, oldest first."""
        return [Owned(r.owner, self._load(r)) for r in self.store.in_status(self.kind, *statuses)]

    def delete(self, owner: str, object_id: str) -> None:
        self.store.delete(self.kind, owner, object_id, self.what)

    def apply(self, obj: T, action: StrEnum, **changes: Any) -> T:
        """Move ``obj`` by ``action``, with ``changes`` to its fields, through its machine."""
        assert self.machine is not None, f"{self.kind} objects have no status machine"

        machine = self.machine

        def write(current: T, move: Transition[Any, Any]) -> T | None:
            update = {"status": move.target, **changes}
            if self.stamp:
                update[f"{move.target}_at"] = now()
            moved = current.model_copy(update=update)
            release = move.target not in machine.claimed  # nobody works on it there any more
            return moved if self._write(moved, current.status, release=release) else None

        return machine.apply(obj, action, status=_status, key=_id, write=write, reread=lambda o: self.get(None, o.id))

    def save(self, obj: T) -> bool:
        """Write ``obj``'s fields (progress, counts) without moving it, only while its status is still
        the one it has: a cancel that came meanwhile is never overwritten. False if it moved."""
        return self._write(obj, obj.status)

    def _write(self, obj: T, expected: StrEnum, *, release: bool = False) -> bool:
        return self.store.update(obj.id, obj.status.value, _dump(obj), [expected.value], release=release)

    def _load(self, rec: ObjectRecord) -> T:
        return self.model.model_validate(rec.data)


def _status(obj: Stored) -> str:
    return obj.status.value


def _id(obj: Stored) -> str:
    return obj.id


def _dump(obj: Stored) -> dict[str, Any]:
    return obj.model_dump(mode="json")
