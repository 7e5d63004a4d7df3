"""Deadlines for many concurrent calls, kept with one timer.

``asyncio.timeout`` arms a timer per use: about 27,000 instructions a call under uvloop
(36,000 on asyncio's own loop), a tenth of what the pod spends on a call to a small model.
A pod's calls mostly end long before their deadlines, and those deadlines mostly come in
the order the calls started, so one timer, armed for the earliest deadline in flight,
serves them all: when it fires, the calls whose deadline has passed are cancelled (and see
``TimeoutError``, as under ``asyncio.timeout``) and the timer is armed for the next one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")

_SLACK_S = 0.001
"""A deadline this close counts as passed when the timer fires: loop timers round to the
millisecond, and a timer that fired a hair early would otherwise be re-armed at once."""


class _Bound:
    __slots__ = ("cancelling", "deadline", "expired", "task")

    def __init__(self, task: asyncio.Task[object], deadline: float) -> None:
        self.task = task
        self.deadline = deadline
        self.cancelling = task.cancelling()
        self.expired = False


class Deadlines:
    """``await deadlines.run(awaitable, deadline)``: the awaitable's result, or ``TimeoutError`` once
    ``time.monotonic()`` passes ``deadline``. For one event loop (the one it is first used on)."""

    def __init__(self) -> None:
        self._bounds: set[_Bound] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._armed_for = float("inf")

    @property
    def in_flight(self) -> int:
        """Calls running under a deadline."""
        return len(self._bounds)

    @property
    def armed(self) -> bool:
        """Whether the timer is set (only while calls are in flight)."""
        return self._timer is not None

    async def run(self, awaitable: Awaitable[T], deadline: float) -> T:
        task = asyncio.current_task()
        assert task is not None, "Deadlines.run needs a task"
        bound = _Bound(task, deadline)
        self._bounds.add(bound)
        if deadline < self._armed_for:
            self._arm(deadline)
        try:
            return await awaitable
        except asyncio.CancelledError:
            # Our cancel, and no one else's (the caller's or the server's): the deadline passed.
            if bound.expired and task.uncancel() <= bound.cancelling:
                raise TimeoutError from None
            raise
        finally:
            self._bounds.discard(bound)
            if not self._bounds:  # nothing left to time: no timer left behind on the loop
                self.close()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._armed_for = float("inf")

    def _arm(self, deadline: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed_for = deadline
        delay = max(deadline - time.monotonic(), 0.0)
        self._timer = asyncio.get_running_loop().call_later(delay, self._expire)

    def _expire(self) -> None:
        self._timer = None
        self._armed_for = float("inf")
        now = time.monotonic() + _SLACK_S
        earliest = float("inf")
        for bound in self._bounds:
            if bound.expired:
                continue
            if bound.deadline <= now:
                bound.expired = True
                bound.task.cancel()
            elif bound.deadline < earliest:
                earliest = bound.deadline
        if earliest < float("inf"):
            self._arm(earliest)
