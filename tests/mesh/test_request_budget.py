"""The pod's budget of request bytes in flight: what fits goes, what never fits is refused at once,
what finds no room waits a bounded time, and small calls never queue behind large ones."""

from __future__ import annotations

import asyncio
import time

import pytest

from mesh.request_budget import BYTES_ELEMENT, WIRE_COPIES, RequestBudget, charge
from mesh.settings import MeshSettings
from mesh_common.errors import ErrorCode, RequestBytesBusy, RequestTooLarge

MiB = 2**20


def _far() -> float:
    return time.monotonic() + 60


def test_a_call_is_charged_its_bytes_and_its_bytes_elements() -> None:
    assert charge(10 * MiB, 0) == WIRE_COPIES * 10 * MiB
    assert charge(10 * MiB, 1000) == WIRE_COPIES * 10 * MiB + 1000 * BYTES_ELEMENT


async def test_calls_that_fit_go_at_once_and_give_back() -> None:
    budget = RequestBudget(limit_bytes=100, wait_s=5)
    assert budget.take_now(60)
    await budget.take(40, deadline=_far())
    assert budget.in_flight == 100
    budget.give_back(60)
    budget.give_back(40)
    assert budget.in_flight == 0


async def test_a_call_larger_than_the_budget_is_refused_at_once() -> None:
    budget = RequestBudget(limit_bytes=100, wait_s=5)
    started = time.monotonic()
    with pytest.raises(RequestTooLarge) as info:
        await budget.take(101, deadline=_far())
    assert time.monotonic() - started < 1
    assert info.value.code is ErrorCode.RESOURCE_EXHAUSTED
    assert "needs 101 bytes" in info.value.message and "pod's 100 bytes" in info.value.message
    assert budget.in_flight == budget.waiting == 0


async def test_a_call_that_finds_no_room_waits_then_is_refused() -> None:
    budget = RequestBudget(limit_bytes=100, wait_s=0.2)
    assert budget.take_now(70)
    started = time.monotonic()
    with pytest.raises(RequestBytesBusy) as info:
        await budget.take(50, deadline=_far())
    waited = time.monotonic() - started
    assert 0.2 <= waited < 5, waited
    assert info.value.code is ErrorCode.RESOURCE_EXHAUSTED
    assert "serving 70 bytes" in info.value.message and "needs 50" in info.value.message
    assert (budget.in_flight, budget.waiting) == (70, 0)


async def test_the_wait_ends_at_the_callers_deadline() -> None:
    budget = RequestBudget(limit_bytes=100, wait_s=30)
    assert budget.take_now(70)
    started = time.monotonic()
    with pytest.raises(RequestBytesBusy):
        await budget.take(50, deadline=started + 0.1)
    assert time.monotonic() - started < 5


async def test_a_waiting_call_goes_when_room_is_given_back() -> None:
    budget = RequestBudget(limit_bytes=100, wait_s=30)
    assert budget.take_now(70)
    waiting = asyncio.create_task(budget.take(50, deadline=_far()))
    await asyncio.sleep(0)  # the task runs until it waits
    assert budget.waiting == 50
    budget.give_back(70)
    await asyncio.wait_for(waiting, 5)
    assert (budget.in_flight, budget.waiting) == (50, 0)


async def test_small_calls_pass_a_large_one_that_waits() -> None:
    budget = RequestBudget(limit_bytes=100, wait_s=30)
    assert budget.take_now(60)
    large = asyncio.create_task(budget.take(80, deadline=_far()))
    await asyncio.sleep(0)  # the task runs until it waits
    assert budget.waiting == 80
    assert budget.take_now(10)  # a small call does not queue behind it
    budget.give_back(60)
    budget.give_back(10)
    await asyncio.wait_for(large, 5)
    assert budget.in_flight == 80


async def test_waiting_bytes_are_bounded_too() -> None:
    budget = RequestBudget(limit_bytes=100, wait_s=30)
    assert budget.take_now(100)
    first = asyncio.create_task(budget.take(90, deadline=_far()))
    await asyncio.sleep(0)  # the task runs until it waits
    assert budget.waiting == 90
    started = time.monotonic()
    with pytest.raises(RequestBytesBusy):  # 90 + 20 would wait: refused without waiting
        await budget.take(20, deadline=_far())
    assert time.monotonic() - started < 1
    with pytest.raises(RequestBytesBusy), budget.waiting_for(20):
        pass
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert (budget.in_flight, budget.waiting) == (100, 0)


def test_the_budget_must_hold_the_largest_message() -> None:
    with pytest.raises(ValueError, match="max_request_bytes_in_flight"):
        MeshSettings(max_message_bytes=64 * MiB, max_request_bytes_in_flight="100MiB")
    settings = MeshSettings(max_message_bytes=64 * MiB, max_request_bytes_in_flight="128MiB")
    assert settings.max_request_bytes_in_flight == 128 * MiB
