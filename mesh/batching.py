"""Opportunistic batching: concurrent calls to one row-independent model run as one framework call.

No call waits for a batch to fill. The first call starts a drain and runs at once;
calls that arrive while the model is busy queue up and go together in the next round,
grouped by requested outputs and by input names, datatypes and trailing shapes, up to
``max_rows`` rows. Between rounds the drain yields to the event loop for as long as
calls keep arriving (see ``Batcher._gather``), so a burst of calls that gRPC hands
over one at a time still runs as one round, even when it pauses halfway. This amortises
the framework's fixed per-call cost (about 200 µs for a scikit-learn ``predict``), which
dominates for small models. If a batched call fails, its calls are retried one by one, so an error lands
only on the request that caused it.

A slow model's rounds may overlap (``overlap``): while a round runs, calls that arrive start the
next round at once if the model may have another inference thread, instead of waiting a whole
round for it to end; only when it may not do they queue for the next round.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence

import numpy as np

QUIET_TURNS = 32
"""Event-loop turns without a new call after which a drain stops gathering and runs its next
round (or ends, when nothing is queued). gRPC hands the loop one call every few turns under
load (four to five at 32 concurrent calls to a small sklearn model), so a round keeps
gathering through a burst however long it is; a fixed 32 turns split such bursts into
rounds of about 5 rows, and this rule lets them form rounds of 32 (1.2-1.3x the throughput
in ``bench/single_pod.py``). An idle turn costs microseconds, and a loop that spins a little
after a call answers the next one sooner than one that slept."""

MAX_GATHER_TURNS = 1024
"""Turns a drain gathers at most before it runs what it has, however steadily calls arrive."""

HOLD_S = 0.001
"""How long a round short of the steady round size (``steady_rows``) keeps gathering after its
last arrival, through pauses longer than the quiet window.

Turns are a clock that runs fast when the loop is idle: 32 idle turns take about 35 µs. When
callers wait for each answer before their next call (a fixed number of clients in step, as
under a load test or a pipeline), every round has their number of rows. When gRPC's threads
then stall for a moment in the middle of a burst, the loop idles and the quiet window closes
on part of the burst; the rest of it comes as one or more late rounds, whose calls wait for
two rounds instead of one, and the next bursts come split too until the rounds line up again.
At 32 such callers about one round in six was cut short this way (6-8% of the calls ran in
such rounds). Holding a round short of the steady size for up to 1 ms brings that to one
round in 45 (0.3-0.4% of the calls), and the p99 to 0.94x, lower in each of 8 alternating
rounds of ``bench/single_pod.py``'s traffic, with 1.03x the throughput.

Only steady rounds are held. Under traffic that arrives independently of the answers, round
sizes vary and a small round is no sign of a stall: holding every round short of the largest
recent one raised the p50 at 2,000 calls/s from an open-loop client from 1.9 to 2.6 ms, while
the steady rule found a steady size in 6 gathers of 5,000 there, held none, and left the p50 as
it was. A drain with nothing queued is never held either: it does not spin waiting for calls
that may not come."""

RECENT_ROUNDS = 8
"""Gathered rounds whose sizes tell whether rounds are steady."""

STEADY_ROUNDS = 6
"""Rounds of ``RECENT_ROUNDS`` that must have one size for it to be the steady size; the others
may be the halves of a split round."""

Arrays = dict[str, np.ndarray]
Execute = Callable[[Arrays, list[str]], Awaitable[Arrays]]


class _Call:
    __slots__ = ("done", "inputs", "key", "outputs", "rows")

    def __init__(self, inputs: Arrays, outputs: list[str], rows: int, done: asyncio.Future[Arrays]) -> None:
        self.inputs = inputs
        self.outputs = outputs
        self.rows = rows
        self.done = done
        if len(inputs) == 1:  # the common case, on every call's path
            ((name, array),) = inputs.items()
            self.key: tuple[object, ...] = (tuple(outputs), name, array.dtype, array.shape[1:])
        else:
            shapes = tuple((name, a.dtype, a.shape[1:]) for name, a in sorted(inputs.items()))
            self.key = (tuple(outputs), shapes)


class Batcher:
    """Batches calls for one loaded model; ``execute`` runs the model once on the given arrays."""

    def __init__(
        self,
        execute: Execute,
        *,
        max_rows: int,
        quiet_turns: int = QUIET_TURNS,
        max_gather_turns: int = MAX_GATHER_TURNS,
        hold_s: float = HOLD_S,
        clock: Callable[[], float] = time.perf_counter,
        overlap: Callable[[], bool] | None = None,
    ) -> None:
        """``overlap`` says whether another round may start while one runs (the model is slow and
        may have another thread); without it rounds run one after another."""
        self._execute = execute
        self._overlap = overlap
        self._rounds: set[asyncio.Task[None]] = set()
        """Rounds started alongside a running one (``overlap``)."""
        self._max_rows = max_rows
        self._quiet_turns = quiet_turns
        self._max_gather_turns = max_gather_turns
        self._hold_s = hold_s
        self._clock = clock
        self._recent_rows: deque[int] = deque(maxlen=RECENT_ROUNDS)
        """Rows each of the last gathered rounds ran."""
        self._queue: list[_Call] = []
        self._queued_rows = 0
        """Rows of the calls in ``_queue``."""
        self._drain: asyncio.Task[None] | None = None
        self._loop = asyncio.get_running_loop()

    async def infer(self, inputs: Arrays, outputs: Sequence[str]) -> Arrays:
        rows = _rows(inputs)
        if rows is None or rows > self._max_rows:
            return await self._execute(inputs, list(outputs))
        call = _Call(inputs, list(outputs), rows, self._loop.create_future())
        self._queue.append(call)
        self._queued_rows += rows
        if self._drain is None:
            self._drain = asyncio.create_task(self._run(), name="batch-drain")
        return await call.done

    async def close(self) -> None:
        tasks = [*self._rounds, *([self._drain] if self._drain is not None else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        try:
            gathered = False  # the drain's first round is the call that started it, run at once
            while self._queue:
                groups = self._take_groups()
                if self._overlap is not None and self._overlap():
                    await self._start_rounds(groups)
                    continue
                if gathered:
                    self._recent_rows.append(sum(call.rows for group in groups for call in group))
                for group in groups:
                    await self._run_group(group)
                await self._gather()
                gathered = True
        finally:
            self._drain = None
            for call in self._queue:
                if not call.done.done():
                    call.done.cancel()

    async def _start_rounds(self, groups: list[list[_Call]]) -> None:
        """Start the groups as rounds of their own, gather what arrives meanwhile, and wait for a
        round to end only while no further round may start."""
        for group in groups:
            task = asyncio.create_task(self._round(group), name="batch-round")
            self._rounds.add(task)
            task.add_done_callback(self._rounds.discard)
        await self._gather()
        while self._queue and self._rounds and not (self._overlap is not None and self._overlap()):
            await asyncio.wait(self._rounds, return_when=asyncio.FIRST_COMPLETED)

    async def _round(self, group: list[_Call]) -> None:
        """A round started alongside others; its callers hear of it even when it is cancelled."""
        try:
            await self._run_group(group)
        finally:
            for call in group:
                if not call.done.done():
                    call.done.cancel()

    async def _gather(self) -> None:
        """Yield to the loop while calls keep arriving: until ``quiet_turns`` turns in a row bring
        none, ``max_rows`` rows are queued, or ``max_gather_turns`` turns have passed. A round
        short of the steady size goes on through a pause of up to ``hold_s`` since its last
        arrival (see ``HOLD_S``)."""
        seen = self._queued_rows
        quiet = 0
        full = self.steady_rows()  # 0: no round is held, and arrivals need no timing
        last_arrival = self._clock() if full else 0.0
        for _ in range(self._max_gather_turns):
            await asyncio.sleep(0)
            queued = self._queued_rows
            if queued >= self._max_rows:
                return
            if queued > seen:
                seen, quiet = queued, 0
                if full:
                    last_arrival = self._clock()
                continue
            quiet += 1
            if quiet >= self._quiet_turns:
                if 0 < queued < full and self._clock() - last_arrival < self._hold_s:
                    continue
                return

    def steady_rows(self) -> int:
        """The rows that ``STEADY_ROUNDS`` of the last ``RECENT_ROUNDS`` gathered rounds had, when
        they had one size; else 0."""
        if len(self._recent_rows) < RECENT_ROUNDS:
            return 0
        ((rows, rounds),) = Counter(self._recent_rows).most_common(1)
        return rows if rounds >= STEADY_ROUNDS else 0

    def _take_groups(self) -> list[list[_Call]]:
        groups: dict[tuple[object, ...], list[_Call]] = {}
        rows: dict[tuple[object, ...], int] = {}
        left: list[_Call] = []
        for call in self._queue:
            if call.done.done():  # its caller gave up
                continue
            key = call.key
            total = rows.get(key, 0) + call.rows
            if total > self._max_rows:
                left.append(call)
                continue
            rows[key] = total
            group = groups.get(key)
            if group is None:
                groups[key] = [call]
            else:
                group.append(call)
        self._queue = left
        self._queued_rows = sum(call.rows for call in left)
        return list(groups.values())

    async def _run_group(self, group: list[_Call]) -> None:
        if len(group) == 1:
            await self._settle(group[0])
            return
        inputs = {name: np.concatenate([c.inputs[name] for c in group]) for name in group[0].inputs}
        try:
            results = await self._execute(inputs, group[0].outputs)
            total = sum(c.rows for c in group)
            if any(a.shape[:1] != (total,) for a in results.values()):
                raise ValueError("a batched output does not have one row per input row")
        except Exception:
            for call in group:  # find the culprit: each call on its own
                await self._settle(call)
            return
        start = 0
        for call in group:
            end = start + call.rows
            if not call.done.done():
                call.done.set_result({name: a[start:end] for name, a in results.items()})
            start = end

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
    if len(inputs) == 1:
        (array,) = inputs.values()
        return (array.shape[0] or None) if array.ndim else None
    sizes = {a.shape[0] if a.ndim else None for a in inputs.values()}
    if len(sizes) != 1:
        return None
    (size,) = sizes
    return size if size else None
