"""The batcher runs concurrent calls as one, splits answers per call, and isolates failures."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from mesh.batching import RECENT_ROUNDS, Batcher


class Model:
    def __init__(self) -> None:
        self.calls: list[int] = []

    async def execute(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        self.calls.append(len(x))
        if np.isnan(x).any():
            raise ValueError("NaN in input")
        result = {"double": x[:, 0] * 2, "rows": x.sum(axis=1, keepdims=True)}
        return {name: result[name] for name in outputs}


async def test_concurrent_calls_run_as_one_batch_and_get_their_own_rows() -> None:
    model = Model()
    batcher = Batcher(model.execute, max_rows=64)
    inputs = [np.full((i + 1, 2), float(i)) for i in range(5)]
    answers = await asyncio.gather(*(batcher.infer({"x": x}, ["double", "rows"]) for x in inputs))
    assert model.calls == [15]
    for x, answer in zip(inputs, answers, strict=True):
        np.testing.assert_array_equal(answer["double"], x[:, 0] * 2)
        np.testing.assert_array_equal(answer["rows"], x.sum(axis=1, keepdims=True))


async def test_groups_by_outputs_and_shapes_and_respects_max_rows() -> None:
    model = Model()
    batcher = Batcher(model.execute, max_rows=4)
    calls = [
        batcher.infer({"x": np.ones((2, 2))}, ["double"]),
        batcher.infer({"x": np.ones((2, 2))}, ["rows"]),
        batcher.infer({"x": np.ones((2, 3))}, ["double"]),
        batcher.infer({"x": np.ones((2, 2))}, ["double"]),
        batcher.infer({"x": np.ones((2, 2))}, ["double"]),
        batcher.infer({"x": np.ones((9, 2))}, ["double"]),  # larger than a batch: runs alone
    ]
    answers = await asyncio.gather(*calls)
    assert sorted(model.calls) == [2, 2, 2, 4, 9]
    assert [len(a["double"] if "double" in a else a["rows"]) for a in answers] == [2, 2, 2, 2, 2, 9]


async def test_a_failing_call_fails_alone() -> None:
    model = Model()
    batcher = Batcher(model.execute, max_rows=64)
    good = np.ones((1, 2))
    bad = np.array([[np.nan, 1.0]])
    results = await asyncio.gather(
        batcher.infer({"x": good}, ["double"]),
        batcher.infer({"x": bad}, ["double"]),
        batcher.infer({"x": good}, ["double"]),
        return_exceptions=True,
    )
    assert isinstance(results[1], ValueError)
    np.testing.assert_array_equal(results[0]["double"], [2.0])
    np.testing.assert_array_equal(results[2]["double"], [2.0])


async def test_cancelled_caller_does_not_break_the_batch() -> None:
    model = Model()
    batcher = Batcher(model.execute, max_rows=64)
    first = asyncio.ensure_future(batcher.infer({"x": np.ones((1, 2))}, ["double"]))
    second = asyncio.ensure_future(batcher.infer({"x": np.ones((1, 2))}, ["double"]))
    await asyncio.sleep(0)
    first.cancel()
    assert (await second)["double"].tolist() == [2.0]
    with pytest.raises(asyncio.CancelledError):
        await first


async def arrive(batcher: Batcher, count: int, *, every_turns: int) -> list[dict[str, np.ndarray]]:
    """``count`` one-row calls, one every ``every_turns`` event-loop turns, as gRPC hands calls to
    the loop under load; returns their answers."""
    calls = []
    for i in range(count):
        calls.append(asyncio.ensure_future(batcher.infer({"x": np.full((1, 2), float(i))}, ["double"])))
        for _ in range(every_turns):
            await asyncio.sleep(0)
    return await asyncio.gather(*calls)


async def test_a_lone_call_runs_at_once() -> None:
    model = Model()
    batcher = Batcher(model.execute, max_rows=64)
    call = asyncio.ensure_future(batcher.infer({"x": np.ones((1, 2))}, ["double"]))
    turns = 0
    while not call.done():
        await asyncio.sleep(0)
        turns += 1
    assert turns <= 4
    assert model.calls == [1]


async def test_calls_that_keep_arriving_while_a_round_gathers_run_as_one_round() -> None:
    model = Model()
    batcher = Batcher(model.execute, max_rows=64, quiet_turns=16)
    # 19 calls over about 150 turns, each within 16 turns of the one before: one round after the first
    answers = await arrive(batcher, 20, every_turns=8)
    assert model.calls == [1, 19]
    assert [a["double"].tolist() for a in answers] == [[2.0 * i] for i in range(20)]


async def test_a_round_runs_once_calls_stop_arriving() -> None:
    model = Model()
    batcher = Batcher(model.execute, max_rows=64, quiet_turns=8)
    await arrive(batcher, 4, every_turns=20)
    assert model.calls == [1, 1, 1, 1]


async def test_a_round_runs_as_soon_as_it_has_max_rows() -> None:
    model = Model()
    batcher = Batcher(model.execute, max_rows=4, quiet_turns=16)
    calls = []
    for i in range(9):  # one every 2 turns: the stream never goes quiet
        if i == 7:  # calls 2-5 filled a round and were answered while calls kept arriving
            assert all(call.done() for call in calls[1:5])
        calls.append(asyncio.ensure_future(batcher.infer({"x": np.full((1, 2), float(i))}, ["double"])))
        for _ in range(2):
            await asyncio.sleep(0)
    await asyncio.gather(*calls)
    assert model.calls == [1, 4, 4]


async def test_a_steady_stream_of_calls_is_cut_into_rounds_after_max_gather_turns() -> None:
    model = Model()
    batcher = Batcher(model.execute, max_rows=64, quiet_turns=16, max_gather_turns=10)
    await arrive(batcher, 12, every_turns=2)
    assert sum(model.calls) == 12
    assert len(model.calls) >= 3
    assert max(model.calls[1:]) <= 6


class Clock:
    """A clock the test moves: ``tick`` advances it one step and yields one loop turn."""

    def __init__(self, step_s: float) -> None:
        self.now = 0.0
        self.step_s = step_s

    def __call__(self) -> float:
        return self.now

    async def tick(self, turns: int = 1) -> None:
        for _ in range(turns):
            self.now += self.step_s
            await asyncio.sleep(0)


async def burst(batcher: Batcher, clock: Clock, pattern: list[int]) -> None:
    """One-row calls, each after the given number of clock ticks; returns once all are answered,
    ticking the clock meanwhile."""
    calls = []
    for wait in pattern:
        await clock.tick(wait)
        calls.append(asyncio.ensure_future(batcher.infer({"x": np.ones((1, 2))}, ["double"])))
    while not all(call.done() for call in calls):
        await clock.tick()


async def settled(sizes: list[int], *, hold_s: float) -> tuple[Model, Clock, Batcher]:
    """A batcher (quiet window 8 turns, 100 µs a turn) that has run one burst per size, each a lone
    call (run at once) and then that many more gathered into a round, with the drain ending
    between bursts; the model's record of rounds is then cleared."""
    model = Model()
    clock = Clock(step_s=0.0001)
    batcher = Batcher(model.execute, max_rows=64, quiet_turns=8, hold_s=hold_s, clock=clock)
    for size in sizes:
        await burst(batcher, clock, [0] + [2] * size)
        await clock.tick(20)
    assert model.calls == [n for size in sizes for n in (1, size)]
    model.calls.clear()
    return model, clock, batcher


async def test_a_round_short_of_the_steady_size_gathers_through_a_pause_shorter_than_hold_s() -> None:
    model, clock, batcher = await settled([5] * RECENT_ROUNDS, hold_s=0.005)
    assert batcher.steady_rows() == 5  # the lone calls do not count as rounds
    # 2 calls, a pause of 30 turns (3 ms: past the quiet window, within hold_s), 2 more
    await burst(batcher, clock, [0, 2, 2, 30, 2])
    assert model.calls == [1, 4]


async def test_a_short_round_runs_once_a_pause_outlasts_hold_s() -> None:
    model, clock, batcher = await settled([5] * RECENT_ROUNDS, hold_s=0.002)
    await burst(batcher, clock, [0, 2, 2, 30, 2])  # the pause is 3 ms: past hold_s
    # the two gathered calls run 2 ms after the last of them; by the time the pause ends the drain
    # has ended too, so the first late call runs at once and the second after it
    assert model.calls == [1, 2, 1, 1]


async def test_a_round_of_the_steady_size_is_not_held() -> None:
    model, clock, batcher = await settled([3] * RECENT_ROUNDS, hold_s=1.0)
    # 3 calls gathered after the lone first: the steady size, so the quiet window ends the round;
    # the late calls find no drain, as in the test above
    await burst(batcher, clock, [0, 2, 2, 2, 30, 2])
    assert model.calls == [1, 3, 1, 1]


async def test_rounds_of_varying_sizes_are_not_held() -> None:
    """Calls that arrive independently of the answers make rounds of any size: a small one is no
    sign of a stalled burst, and holding it would only delay its calls."""
    model, clock, batcher = await settled([5, 3] * (RECENT_ROUNDS // 2), hold_s=1.0)
    assert batcher.steady_rows() == 0
    await burst(batcher, clock, [0, 2, 2, 30, 2])
    assert model.calls == [1, 2, 1, 1]


class GatedModel:
    """A model whose rounds run until the test lets them go, one gate per round in order."""

    def __init__(self) -> None:
        self.rounds: list[int] = []
        self.gates: list[asyncio.Event] = []
        self.started = asyncio.Condition()

    async def execute(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        async with self.started:
            self.rounds.append(len(inputs["x"]))
            self.started.notify_all()
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()
        return {"double": inputs["x"][:, 0] * 2}


async def _rounds_started(model: GatedModel, count: int) -> None:
    async with asyncio.timeout(5), model.started:
        await model.started.wait_for(lambda: len(model.rounds) >= count)


@pytest.mark.parametrize("overlap", [True, False])
async def test_calls_arriving_during_a_round_start_their_own_when_rounds_may_overlap(overlap: bool) -> None:
    model = GatedModel()
    batcher = Batcher(model.execute, max_rows=64, overlap=lambda: overlap)
    first = asyncio.create_task(batcher.infer({"x": np.ones((1, 2))}, ["double"]))
    await _rounds_started(model, 1)
    late = [asyncio.create_task(batcher.infer({"x": np.ones((1, 2))}, ["double"])) for _ in range(3)]
    if overlap:  # the late calls run now, as one round, while the first still runs
        await _rounds_started(model, 2)
        assert model.rounds == [1, 3]
    else:  # they wait for the first round to end
        for _ in range(100):
            await asyncio.sleep(0)
        assert model.rounds == [1]
        model.gates[0].set()
        await _rounds_started(model, 2)
    for gate in model.gates:
        gate.set()
    for call in (first, *late):
        np.testing.assert_array_equal((await call)["double"], [2.0])
    await batcher.close()


async def test_closing_a_batcher_ends_the_calls_of_its_overlapping_rounds() -> None:
    model = GatedModel()
    batcher = Batcher(model.execute, max_rows=64, overlap=lambda: True)
    calls = [asyncio.create_task(batcher.infer({"x": np.ones((1, 2))}, ["double"])) for _ in range(2)]
    await _rounds_started(model, 1)
    await batcher.close()
    async with asyncio.timeout(5):
        results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results), results
