"""Values made ahead of use, on a helper thread, in the order they will be needed.

The executor knows which objects it will read and which new tensors it will fill before it
computes the first target; `Lookahead` makes them (maps and verifies an object, faults in a
fresh buffer) on one helper thread while the caller computes, holding at most `budget` bytes
of values made and not yet taken. `take` never waits for the queue: a value the helper has
not started is made by the caller itself, so a run is never slower than without the helper,
and a value nobody takes only costs its place in the budget.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(eq=False)
class _Pending(Generic[K, V]):
    key: K
    nbytes: int
    future: Future[V] = field(default_factory=Future)


class Lookahead(Generic[K, V]):
    """`make(key)` run ahead on a helper thread for each scheduled key, once per `take`."""

    def __init__(self, make: Callable[[K], V], budget: int, name: str) -> None:
        self.make = make
        self.budget = budget
        self.name = name
        self._queue: deque[_Pending[K, V]] = deque()
        self._scheduled: dict[K, deque[_Pending[K, V]]] = {}
        self._held = 0  # bytes of values being made or made, not yet taken
        self._changed = threading.Condition()
        self._running = False

    def schedule(self, key: K, nbytes: int) -> None:
        """Make `make(key)` ahead, for one later `take(key)`."""
        pending: _Pending[K, V] = _Pending(key, nbytes)
        with self._changed:
            self._queue.append(pending)
            self._scheduled.setdefault(key, deque()).append(pending)
            if not self._running:  # the helper runs while there is work, then ends
                self._running = True
                threading.Thread(target=self._run, name=self.name, daemon=True).start()
            self._changed.notify_all()

    def take(self, key: K) -> V:
        """`make(key)`: the value made ahead if the helper started it, else made now."""
        with self._changed:
            scheduled = self._scheduled.get(key)
            pending = scheduled.popleft() if scheduled else None
            if pending is not None and pending in self._queue:
                self._queue.remove(pending)
                self._changed.notify_all()
                pending = None
        if pending is None:
            return self.make(key)
        try:
            return pending.future.result()
        finally:
            with self._changed:
                self._held -= pending.nbytes
                self._changed.notify_all()

    def _run(self) -> None:
        while True:
            with self._changed:
                while self._queue and self._held > 0 and self._held + self._queue[0].nbytes > self.budget:
                    self._changed.wait()
                if not self._queue:
                    self._running = False
                    return
                pending = self._queue.popleft()
                self._held += pending.nbytes
            try:
                pending.future.set_result(self.make(pending.key))
            except Exception as exc:  # the taker raises it
                pending.future.set_exception(exc)
