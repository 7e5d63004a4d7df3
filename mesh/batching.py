"""Opportunistic batching: concurrent calls to one row-independent model run as one framework call.

No call waits for a batch to fill. The first call starts a drain; calls that arrive
while the model is busy queue up and go together in the next round, grouped by
requested outputs and by input names, datatypes and trailing shapes, up to
``max_rows`` rows. This amortises the framework's fixed per-call cost (about
270 µs for a scikit-learn ``predict``), which dominates for small models. If a
batched call fails, its calls are retried one by one, so an error lands only on
the request that caused it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

GATHER_TURNS = 32
"""Event-loop turns a drain yields between rounds. A request needs a few turns to get from gRPC
to the batcher, and under load each turn serves other calls, so more turns make bigger batches
(about 10 rows instead of 2 at 32 concurrent calls to a small sklearn model: 1.3x the throughput
in ``bench/single_pod.py``). An idle turn costs microseconds, and a loop that spins a little after
a call answers the next one sooner than one that slept (p50 with one client: 2.1 ms, 3.5 ms at 4
turns)."""

Arrays = dict[str, np.ndarray]
Execute = Callable[[Arrays, list[str]], Awaitable[Arrays]]


@dataclass
class _Call:
    inputs: Arrays
    outputs: list[str]
    rows: int
    done: asyncio.Future[Arrays] = field(repr=False)

    def key(self) -> tuple[object, ...]:
        shapes = tuple((name, a.dtype.str, a.shape[1:]) for name, a in sorted(self.inputs.items()))
        return (tuple(self.outputs), shapes)


class Batcher:
    """Batches calls for one loaded model; ``execute`` runs the model once on the given arrays."""

    def __init__(self, execute: Execute, *, max_rows: int, gather_turns: int = GATHER_TURNS) -> None:
        self._execute = execute
        self._max_rows = max_rows
        self._gather_turns = gather_turns
        self._queue: list[_Call] = []
        self._drain: asyncio.Task[None] | None = None

    async def infer(self, inputs: Arrays, outputs: Sequence[str]) -> Arrays:
        rows = _rows(inputs)
        if rows is None or rows > self._max_rows:
            return await self._execute(inputs, list(outputs))
        call = _Call(inputs, list(outputs), rows, asyncio.get_running_loop().create_future())
        self._queue.append(call)
        if self._drain is None:
            self._drain = asyncio.create_task(self._run(), name="batch-drain")
        return await call.done

    async def close(self) -> None:
        if self._drain is not None:
            self._drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain

    async def _run(self) -> None:
        try:
            while self._queue:
                for group in self._take_groups():
                    await self._run_group(group)
                for _ in range(self._gather_turns):  # let calls that arrived meanwhile join the next round
                    await asyncio.sleep(0)
        finally:
            self._drain = None
            for call in self._queue:
                if not call.done.done():
                    call.done.cancel()

    def _take_groups(self) -> list[list[_Call]]:
        groups: dict[tuple[object, ...], list[_Call]] = {}
        rows: dict[tuple[object, ...], int] = {}
        left: list[_Call] = []
        for call in self._queue:
            key = call.key()
            if call.done.done() or rows.get(key, 0) + call.rows > self._max_rows:
                if not call.done.done():
                    left.append(call)
                continue
            groups.setdefault(key, []).append(call)
            rows[key] = rows.get(key, 0) + call.rows
        self._queue = left
        return list(groups.values())

    async def _run_group(self, group: list[_Call]) -> None:
        if len(group) == 1:
            await self._settle(group[0])
            return
        inputs = {name: np.concatenate([c.inputs[name] for c in group]) for name in group[0].inputs}
        try:
            results = await self._execute(inputs, group[0].outputs)
            offsets = np.cumsum([0] + [c.rows for c in group])
            split = [
                {n: a[offsets[i] : offsets[i + 1]] for n, a in results.items()} for i in range(len(group))
            ]
            if any(a.shape[:1] != (c.rows,) for c, r in zip(group, split, strict=True) for a in r.values()):
                raise ValueError("a batched output does not have one row per input row")
        except Exception:
            for call in group:  # find the culprit: each call on its own
                await self._settle(call)
            return
        for call, result in zip(group, split, strict=True):
            if not call.done.done():
                call.done.set_result(result)

    async def _settle(self, call: _Call) -> None:
        try:
            result = await self._execute(call.inputs, call.outputs)
        except Exception as exc:
            if not call.done.done():
                call.done.set_exception(exc)
            return
        if not call.done.done():
            call.done.set_result(result)


def _rows(inputs: Arrays) -> int | None:
    """The shared batch size of the inputs, or None when they cannot be batched."""
    sizes = {a.shape[0] if a.ndim else None for a in inputs.values()}
    if len(sizes) != 1:
        return None
    (size,) = sizes
    return size if size else None
