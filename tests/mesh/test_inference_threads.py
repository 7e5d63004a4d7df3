"""InferenceThreads: fast calls keep threads of their own, models take turns, nothing leaks."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from mesh.inference_threads import InferenceThreads


class Gates:
    """Blocking calls that run until the test opens their gate, recording the order they started."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self._gates: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def call(self, name: str) -> str:
        with self._lock:
            self.started.append(name)
            gate = self._gates.setdefault(name, threading.Event())
        assert gate.wait(10), f"{name} was never let go"
        return name

    def open(self, name: str) -> None:
        with self._lock:
            self._gates.setdefault(name, threading.Event()).set()


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(4) as executor:
        yield executor


async def _until(condition, what: str) -> None:
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{what} did not happen")


async def test_slow_models_leave_the_fast_threads_to_fast_models(pool: ThreadPoolExecutor) -> None:
    threads = InferenceThreads(pool, threads=3, fast_threads=1, slow_call_s=0.05)
    gates = Gates()
    slow = [asyncio.create_task(threads.run(f"slow-{i}", True, gates.call, f"slow-{i}")) for i in range(3)]
    await _until(lambda: len(gates.started) == 2, "two slow calls starting")
    assert not threads.has_room("slow-2", True)
    fast = asyncio.create_task(threads.run("fast", False, gates.call, "fast"))
    await _until(lambda: "fast" in gates.started, "the fast call starting")
    assert sorted(gates.started) == ["fast", "slow-0", "slow-1"]  # slow-2 waits for a slow thread
    gates.open("fast")
    assert await fast == "fast"
    assert "slow-2" not in gates.started  # the fast thread stays the fast models'
    gates.open("slow-0")
    await _until(lambda: "slow-2" in gates.started, "the third slow call starting")
    for name in ("slow-1", "slow-2"):
        gates.open(name)
    assert await asyncio.gather(*slow) == ["slow-0", "slow-1", "slow-2"]


async def test_a_model_alone_uses_every_thread_but_takes_no_more_once_another_waits(
    pool: ThreadPoolExecutor,
) -> None:
    threads = InferenceThreads(pool, threads=2, fast_threads=0, slow_call_s=0.05)
    gates = Gates()
    busy = [asyncio.create_task(threads.run("busy", True, gates.call, f"busy-{i}")) for i in range(4)]
    await _until(lambda: len(gates.started) == 2, "the busy model taking both threads")
    other = asyncio.create_task(threads.run("other", True, gates.call, "other"))
    await asyncio.sleep(0)  # it asks for a thread and waits
    gates.open("busy-0")
    await _until(lambda: len(gates.started) == 3, "a freed thread going to a waiting call")
    assert gates.started[2] == "other", "the freed thread went to the model that holds none"
    for name in ("busy-1", "other", "busy-2", "busy-3"):
        gates.open(name)
    await asyncio.gather(*busy, other)
    assert gates.started[3:] == ["busy-2", "busy-3"]


async def test_a_caller_that_gives_up_frees_its_place_and_its_thread_when_the_call_returns(
    pool: ThreadPoolExecutor,
) -> None:
    threads = InferenceThreads(pool, threads=1, fast_threads=0, slow_call_s=0.05)
    gates = Gates()
    running = asyncio.create_task(threads.run("a", True, gates.call, "a-0"))
    await _until(lambda: gates.started == ["a-0"], "the first call starting")
    waiting = asyncio.create_task(threads.run("b", True, gates.call, "b-0"))
    await asyncio.sleep(0)  # it asks for a thread and waits
    waiting.cancel()  # gave up while waiting: no thread, no place in the queue
    running.cancel()  # gave up while running: its thread stays taken until the call returns
    with pytest.raises(asyncio.CancelledError):
        await waiting
    with pytest.raises(asyncio.CancelledError):
        await running
    assert not threads.has_room("c", True)
    gates.open("a-0")
    await _until(lambda: threads.has_room("c", True), "the thread coming back")
    gates.open("c-0")
    assert await threads.run("c", True, gates.call, "c-0") == "c-0"
    assert gates.started == ["a-0", "c-0"]


def test_fast_threads_must_leave_slow_models_a_thread(pool: ThreadPoolExecutor) -> None:
    with pytest.raises(ValueError, match="fast_threads must be 0 to 1"):
        InferenceThreads(pool, threads=2, fast_threads=2, slow_call_s=0.05)
