"""A pod's budget of request bytes in flight: what bounds the memory its calls hold.

Every inference call is charged, from its size and header alone, the memory it will hold
while it is decoded, run or forwarded (``charge``). Calls take their charge from the budget
before any of that happens and give it back when they are answered. A call whose charge
alone exceeds the budget is refused at once; one that finds too little room waits for at most
``wait_s`` (and never past its deadline), and is then refused. A call that fits goes ahead even
while larger ones wait: small calls never queue behind large ones (waiting calls are let in
oldest first, each as soon as it fits).
Calls waiting hold their request's bytes too, so the charges of the waiting calls are bounded
by the same budget again: beyond it a call is refused without waiting.

Transport-free: the edge computes the charge and maps the errors to statuses.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Iterator

from mesh_common.errors import RequestBytesBusy, RequestTooLarge

WIRE_COPIES = 2
"""Copies of a request's bytes a call holds: the bytes it came in (numeric tensors are views of
them), and one conversion by the model's framework (a dtype cast, a copy into its own tensors)."""

BYTES_ELEMENT = 256
"""Bytes charged per BYTES element beyond its data: the Python ``bytes`` object it decodes into
and its slot in the array (about 90 bytes for short elements), and the framework's own object
for it (onnxruntime converts each to ``str``, then to a C++ string)."""


def charge(wire_bytes: int, bytes_elements: int) -> int:
    """The memory a call of ``wire_bytes`` whose inputs hold ``bytes_elements`` BYTES elements
    holds while it is served, in bytes."""
    return WIRE_COPIES * wire_bytes + BYTES_ELEMENT * bytes_elements


class RequestBudget:
    """Bytes of requests in flight on a pod, bounded by ``limit_bytes``.

    ``take`` a charge before serving a call and ``give_back`` the same charge when it ends.
    """

    def __init__(self, *, limit_bytes: int, wait_s: float) -> None:
        self.limit_bytes = limit_bytes
        self.wait_s = wait_s
        self.in_flight = 0
        """Bytes charged to calls being served."""
        self.waiting = 0
        """Bytes charged to calls waiting for room."""
        self._queue: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    @contextlib.contextmanager
    def waiting_for(self, nbytes: int) -> Iterator[None]:
        """Count ``nbytes`` as waiting while a call is read to find its charge (a large call is
        parsed on a thread first).

        Raises:
            RequestBytesBusy: the calls already waiting hold the budget's worth of bytes.
        """
        if self.waiting + nbytes > self.limit_bytes:
            raise self._busy(nbytes, waited_s=0.0)
        self.waiting += nbytes
        try:
            yield
        finally:
            self.waiting -= nbytes

    def take_now(self, nbytes: int) -> bool:
        """Take ``nbytes`` if they fit now (every small call's path: no coroutine)."""
        if self.in_flight + nbytes > self.limit_bytes:
            return False
        self.in_flight += nbytes
        return True

    async def take(self, nbytes: int, *, deadline: float) -> None:
        """Take ``nbytes``, waiting for room until ``wait_s`` or the monotonic ``deadline`` passes.

        Raises:
            RequestTooLarge: ``nbytes`` exceed the whole budget.
            RequestBytesBusy: no room came in time, or too many bytes are already waiting.
        """
        if self.take_now(nbytes):
            return
        if nbytes > self.limit_bytes:
            raise RequestTooLarge(need_bytes=nbytes, limit_bytes=self.limit_bytes)
        if self.waiting + nbytes > self.limit_bytes:
            raise self._busy(nbytes, waited_s=0.0)
        started = time.monotonic()
        timeout = max(min(self.wait_s, deadline - started), 0.0)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (nbytes, waiter)
        self._queue.append(entry)
        self.waiting += nbytes
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except TimeoutError:
            if not waiter.done():
                raise self._busy(nbytes, waited_s=time.monotonic() - started) from None
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.give_back(nbytes)  # granted as the caller left
            raise
        finally:
            if not waiter.done():
                waiter.cancel()
                self._queue.remove(entry)
                self.waiting -= nbytes
                self._grant()  # a large call leaving the head of the queue may unblock smaller ones

    def give_back(self, nbytes: int) -> None:
        self.in_flight -= nbytes
        if self._queue:
            self._grant()

    def _grant(self) -> None:
        """Let in the waiting calls that fit, oldest first."""
        for entry in list(self._queue):
            nbytes, waiter = entry
            if self.in_flight + nbytes <= self.limit_bytes:
                self._queue.remove(entry)
                self.waiting -= nbytes
                self.in_flight += nbytes
                waiter.set_result(None)

    def _busy(self, nbytes: int, *, waited_s: float) -> RequestBytesBusy:
        return RequestBytesBusy(
            need_bytes=nbytes,
            in_flight_bytes=self.in_flight,
            waiting_bytes=self.waiting,
            limit_bytes=self.limit_bytes,
            waited_s=waited_s,
        )
