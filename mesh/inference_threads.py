"""The pod's inference threads, shared between models so that slow ones cannot starve the rest.

Three rules decide whether a call may take a thread now; a call that may not waits in its
model's queue, and a freed thread goes to the waiting models in turn (round robin):

- **Fast calls keep threads of their own.** Models whose calls are slow (their average is at
  least ``slow_call_s``, or not measured yet) hold at most ``threads - fast_threads`` threads
  together, so a model answering in milliseconds never waits behind calls that take seconds.
- **A model holds at most its share while others wait.** The share is the threads its class
  may use divided among the models running or waiting calls (at least one): alone, a model may
  use them all; once another model waits, it takes no further thread until it is under its
  share again.
- **Nothing runs past the pool.** At most ``threads`` calls run at once.

A thread counts as taken until the framework call returns, even when its caller gave up.
"""

from __future__ import annotations

import asyncio
import math
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import TypeVar

T = TypeVar("T")


class InferenceThreads:
    """Runs blocking inference calls on ``executor`` (which has ``threads`` workers) fairly."""

    def __init__(self, executor: Executor, *, threads: int, fast_threads: int, slow_call_s: float) -> None:
        if not 0 <= fast_threads < threads:
            raise ValueError(f"fast_threads must be 0 to {threads - 1}, not {fast_threads}")
        self._executor = executor
        self._threads = threads
        self._slow_limit = threads - fast_threads
        self.slow_call_s = slow_call_s
        self._busy = 0
        self._busy_slow = 0
        self._held: dict[str, int] = {}
        """Threads each model's calls hold now (models holding none are absent)."""
        self._waiting: OrderedDict[str, deque[tuple[asyncio.Future[None], bool]]] = OrderedDict()
        """Calls waiting for a thread, per model, in the order models get their turn."""

    def is_slow(self, average_s: float | None) -> bool:
        """Whether a model with this average call time counts as slow (unmeasured ones do)."""
        return average_s is None or average_s >= self.slow_call_s

    def has_room(self, model_id: str, slow: bool) -> bool:
        """Whether a call for ``model_id`` would take a thread at once."""
        return not self._waiting.get(model_id) and self._may_run(model_id, slow)

    async def run(self, model_id: str, slow: bool, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` on a thread once the rules above let ``model_id`` have one."""
        await self._acquire(model_id, slow)
        try:
            future: Future[T] = self._executor.submit(fn, *args)
        except BaseException:
            self._release(model_id, slow)
            raise
        loop = asyncio.get_running_loop()
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(self._release, model_id, slow))
        return await asyncio.wrap_future(future)

    def _may_run(self, model_id: str, slow: bool) -> bool:
        if self._busy >= self._threads:
            return False
        limit = self._slow_limit if slow else self._threads
        if slow and self._busy_slow >= limit:
            return False
        contenders = len(self._held.keys() | self._waiting.keys() | {model_id})
        return self._held.get(model_id, 0) < max(1, math.ceil(limit / contenders))

    async def _acquire(self, model_id: str, slow: bool) -> None:
        if self.has_room(model_id, slow):
            self._take(model_id, slow)
            return
        granted = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(model_id, deque()).append((granted, slow))
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():  # granted just as its caller gave up
                self._release(model_id, slow)
            else:
                self._forget_waiter(model_id, granted)
            raise

    def _take(self, model_id: str, slow: bool) -> None:
        self._busy += 1
        self._busy_slow += slow
        self._held[model_id] = self._held.get(model_id, 0) + 1

    def _release(self, model_id: str, slow: bool) -> None:
        self._busy -= 1
        self._busy_slow -= slow
        held = self._held[model_id] - 1
        if held:
            self._held[model_id] = held
        else:
            del self._held[model_id]
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand free threads to waiting models in turn, one call per model per pass."""
        granted = True
        while granted and self._waiting and self._busy < self._threads:
            granted = False
            for model_id in list(self._waiting):
                queue = self._waiting[model_id]
                future, slow = queue[0]
                if future.cancelled():
                    queue.popleft()
                elif self._may_run(model_id, slow):
                    queue.popleft()
                    self._take(model_id, slow)
                    future.set_result(None)
                    granted = True
                else:
                    continue
                if queue:
                    self._waiting.move_to_end(model_id)  # its next call waits for the others' turn
                else:
                    del self._waiting[model_id]

    def _forget_waiter(self, model_id: str, future: asyncio.Future[None]) -> None:
        queue = self._waiting.get(model_id)
        if queue is None:
            return
        for waiter in list(queue):
            if waiter[0] is future:
                queue.remove(waiter)
        if not queue:
            del self._waiting[model_id]
        self._dispatch()
