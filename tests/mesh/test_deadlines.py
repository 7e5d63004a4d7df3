"""One timer bounds every call by its own deadline, on asyncio's loop and on uvloop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from mesh.deadlines import Deadlines

LOOPS: dict[str, Callable[[Coroutine[Any, Any, Any]], Any]] = {"asyncio": asyncio.run, "uvloop": uvloop.run}


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    return LOOPS[request.param]


async def _answer(value: int, after_s: float) -> int:
    await asyncio.sleep(after_s)
    return value


async def _never() -> None:
    await asyncio.Event().wait()


async def _cancel(call: asyncio.Future[Any], deadlines: Deadlines) -> None:
    """Cancel a call waiting under a deadline: it sees CancelledError, and no timer is left."""
    assert deadlines.in_flight >= 1 and deadlines.armed
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert deadlines.in_flight == 0 and not deadlines.armed


def test_a_call_that_ends_in_time_returns_its_result(run: Callable[..., Any]) -> None:
    async def main() -> None:
        deadlines = Deadlines()
        assert await deadlines.run(_answer(7, 0), time.monotonic() + 5) == 7
        assert deadlines.in_flight == 0 and not deadlines.armed

    run(main())


def test_each_call_times_out_at_its_own_deadline(run: Callable[..., Any]) -> None:
    """A late deadline armed first does not delay an earlier one that comes after it; a call past
    its deadline sees TimeoutError while the others go on."""

    async def short() -> None:
        deadlines = Deadlines()
        start = time.monotonic()
        long_call = asyncio.ensure_future(deadlines.run(_never(), start + 30))
        await asyncio.sleep(0)  # the 30 s deadline is armed before the short ones come

        ended: list[tuple[str, str]] = []

        async def bounded(name: str, awaitable: Coroutine[Any, Any, Any], after_s: float) -> float:
            try:
                await deadlines.run(awaitable, start + after_s)
            except TimeoutError:
                ended.append((name, "timeout"))
            else:
                ended.append((name, "done"))
            return time.monotonic() - start

        late_s, early_s, _ = await asyncio.gather(
            bounded("late", _never(), 0.3),
            bounded("early", _never(), 0.1),
            bounded("answered", _answer(1, 0.2), 0.5),
        )
        # Timers fire in deadline order, however busy the machine: the order is exact.
        assert ended == [("early", "timeout"), ("answered", "done"), ("late", "timeout")]
        assert early_s >= 0.099 and late_s >= 0.299  # not before their deadlines (1 ms of slack)
        assert late_s < 10  # not held back by the 30 s deadline armed first
        assert not long_call.done()
        await _cancel(long_call, deadlines)

    run(short())


def test_a_cancel_from_elsewhere_stays_a_cancel(run: Callable[..., Any]) -> None:
    """The caller's (or gRPC's) cancellation is not turned into a timeout, even near the deadline."""

    async def main() -> None:
        deadlines = Deadlines()
        call = asyncio.ensure_future(deadlines.run(_never(), time.monotonic() + 30))
        await asyncio.sleep(0)  # one turn: the call starts and waits under its deadline
        await _cancel(call, deadlines)

    run(main())


def test_a_deadline_already_past_times_out_at_once(run: Callable[..., Any]) -> None:
    async def main() -> None:
        deadlines = Deadlines()
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await deadlines.run(_never(), started - 1)
        assert time.monotonic() - started < 0.5
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]

    run(main())
