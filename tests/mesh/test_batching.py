"""The batcher runs concurrent calls as one, splits answers per call, and isolates failures."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from mesh.batching import Batcher


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
