"""Scripted faults: make the next requests to one operation fail, before or after applying it."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Fault:
    """One scripted failure: answer ``status``; with ``after`` the operation is applied first (the
    response is lost, as when a connection drops after the server committed)."""

    status: int
    after: bool


class Faults:
    """Per-operation queues of scripted failures, consumed one per request in order."""

    def __init__(self) -> None:
        self._queues: dict[str, deque[Fault]] = {}

    def inject(
        self, operation_id: str, *, status: int = 503, times: int = 1, after: bool = False
    ) -> None:
        """The next ``times`` requests to ``operation_id`` answer ``status`` with an error body;
        with ``after=True`` each of them is applied first and only its answer is replaced."""
        if times < 1:
            raise ValueError("times must be at least 1")
        if not 400 <= status <= 599:
            raise ValueError("status must be an HTTP error status (400-599)")
        self._queues.setdefault(operation_id, deque()).extend([Fault(status, after)] * times)

    def take(self, operation_id: str) -> Fault | None:
        """The fault for this request to ``operation_id``, if one is scripted."""
        queue = self._queues.get(operation_id)
        if not queue:
            return None
        return queue.popleft()

    def pending(self, operation_id: str) -> int:
        """How many scripted faults are left for ``operation_id``."""
        return len(self._queues.get(operation_id, ()))

    def clear(self) -> None:
        """Drop every scripted fault."""
        self._queues.clear()
