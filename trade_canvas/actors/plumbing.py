"""Actor plumbing: telling an actor, finding a sibling, reporting to the supervisor, and the
supervisor's record of each child.

Every actor uses ``tell`` (never waits, never raises for a restarting receiver), finds the other
actors of its series through a ``RefLookup``, reports start and failure through its
``ChildLink`` and sets ``on_failure = report_failure``, the one failure path.

The records double as the operator's status board: the status endpoint reads them directly
instead of asking a (possibly busy) actor, so it answers even while actors are blocked.
"""

from __future__ import annotations

import enum
import itertools
import queue
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Callable, Protocol, cast

import pykka

from trade_canvas.actors.messages import ChildFailed, ChildStarted

RefLookup = Callable[[str], "pykka.ActorRef[Any] | None"]


def tell(ref: pykka.ActorRef[Any] | None, message: object) -> bool:
    """Tell ``ref`` if it is up; a restarting receiver catches up from the store on start."""
    if ref is None:
        return False
    try:
        ref.tell(message)
    except pykka.ActorDeadError:
        return False
    return True


class ChildState(str, enum.Enum):
    """Lifecycle of one supervised actor."""

    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPED = "stopped"
    FAILED = "failed"


# Allowed transitions; anything else is a supervisor bug and raises.
_TRANSITIONS: dict[ChildState, frozenset[ChildState]] = {
    ChildState.STARTING: frozenset(
        {ChildState.RUNNING, ChildState.RESTARTING, ChildState.STOPPED, ChildState.FAILED}
    ),
    ChildState.RUNNING: frozenset({ChildState.RESTARTING, ChildState.STOPPED}),
    ChildState.RESTARTING: frozenset({ChildState.STARTING, ChildState.STOPPED, ChildState.FAILED}),
    ChildState.FAILED: frozenset({ChildState.STARTING, ChildState.STOPPED, ChildState.RESTARTING}),
    ChildState.STOPPED: frozenset(),
}


class ChildLink:
    """Handed to a child actor: how it reports start, failure and work done."""

    def __init__(self, record: "ChildRecord", supervisor: pykka.ActorRef[Any] | None) -> None:
        self.record = record
        self.supervisor = supervisor
        self.generation = record.generation
        # What a dying child lets go of before it reports (sockets, poller threads): pykka calls
        # ``on_failure`` instead of ``on_stop`` when a handler raises.
        self.release: Callable[[], None] = lambda: None

    def started(self) -> None:
        """Tell the supervisor that ``on_start`` finished."""
        if self.supervisor is not None:
            self.supervisor.tell(ChildStarted(self.record.series_id, self.record.kind, self.generation))

    def failed(self, error: BaseException | None) -> None:
        """Release what the child holds, then tell the supervisor it is dying of ``error``."""
        self.release()
        if self.supervisor is not None:
            text = f"{type(error).__name__}: {error}" if error is not None else "unknown error"
            self.supervisor.tell(
                ChildFailed(self.record.series_id, self.record.kind, self.generation, text)
            )

    def handled(self) -> None:
        """Count one handled message."""
        self.record.handled += 1


class Supervised(Protocol):
    """An actor with a link to its supervisor."""

    link: ChildLink


def report_failure(
    actor: Supervised,
    exception_type: type[BaseException] | None,
    exception_value: BaseException | None,
    traceback: TracebackType | None,
) -> None:
    """The ``on_failure`` of every supervised actor: release, then tell the supervisor.

    Assigned as ``on_failure = report_failure`` in each actor class (a shared function, not a
    base class: actors subclass ``pykka.ThreadingActor`` only); an actor with something to let
    go of sets ``link.release``.
    """
    actor.link.failed(exception_value)


ChildStart = Callable[[ChildLink], pykka.ActorRef[Any]]

_ids = itertools.count(1)


@dataclass(eq=False)
class ChildRecord:
    """Mutable status of one supervised child (owned by the supervisor)."""

    kind: str
    series_id: str | None
    start: ChildStart
    state: ChildState = ChildState.STARTING
    ref: pykka.ActorRef[Any] | None = None
    generation: int = 0
    started_at: float | None = None
    running_since: float | None = None
    restarts: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    handled: int = 0
    backoff_s: float = 0.0
    next_restart_at: float | None = None
    start_deadline: float | None = None
    extra: Callable[[], dict[str, Any]] | None = None
    id: int = field(default_factory=lambda: next(_ids))

    def move(self, new: ChildState) -> None:
        """Change state, refusing transitions the table does not allow."""
        if new is self.state:
            return
        if new not in _TRANSITIONS[self.state]:
            raise RuntimeError(f"illegal child transition {self.state.value} -> {new.value}")
        self.state = new

    def snapshot(self) -> dict[str, Any]:
        """Return the JSON view for the status endpoint."""
        ref = self.ref
        # A ThreadingActor's inbox is a queue.Queue; pykka types it as its ActorInbox protocol.
        inbox = cast("queue.Queue[Any] | None", ref.actor_inbox if ref is not None else None)
        depth = inbox.qsize() if ref is not None and inbox is not None and ref.is_alive() else 0
        view = {
            "kind": self.kind,
            "series_id": self.series_id,
            "state": self.state.value,
            "started_at": self.started_at,
            "restarts": self.restarts,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "queue_depth": depth,
            "messages_handled": self.handled,
        }
        if self.extra is not None:
            view.update(self.extra())
        return view


class StatusBoard:
    """Every child record, readable from any thread without asking an actor."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[int, ChildRecord] = {}
        self.booted_at = time.time()

    def add(self, record: ChildRecord) -> None:
        """Show a record."""
        with self._lock:
            self._records[record.id] = record

    def remove(self, record: ChildRecord) -> None:
        """Stop showing a record."""
        with self._lock:
            self._records.pop(record.id, None)

    def records(self) -> list[ChildRecord]:
        """Return the records, supervisor first, then by series and kind."""
        with self._lock:
            records = list(self._records.values())
        return sorted(records, key=lambda r: (r.series_id is not None, r.series_id or "", r.kind))
