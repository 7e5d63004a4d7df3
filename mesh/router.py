"""Where a call runs: here, on a pod that holds the model, or on the pod placement picks.

Transport-free: the edge hands over the raw request bytes and a ``local`` callable that
serves them on this pod; peers are reached through the ``Peers`` interface (``mesh.edge.hop``).

One call, at most ``attempts`` tries, all within the caller's deadline:

1. The model is loaded here -> serve here.
2. Loaded (or loading) on other live pods -> forward to the one with the fewest calls
   in flight, "serve only if loaded" (or "join the load").
3. Loaded nowhere -> ``placement.loading.choose_load_pod`` ranks the pods; the chosen
   pod claims the load in the registry (compare-and-swap, so two pods never load one
   model at once), loads and serves. This pod may be the chosen one.

A pod that answers "not here", fails the load, has no room or does not answer is
excluded and the next try picks again from a fresh view (``route_tries``: each error is
read by its routing, the same for this pod's errors and a peer's). A forwarded call is
served where it lands or refused there ("not here"): it is never forwarded again, so no
call loops. Exhausted tries end in ``Unavailable`` with every reason (the load's error, or
``ModelLoadFailed`` with each pod's reason, when loads failed), never ``INTERNAL``.

The router keeps nothing per model: each try's decision and its reason travel with the try
(``Target``); a copy's reason is kept in the registry, where ``mesh status`` reads it.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import NamedTuple

from mesh.cache import ModelCache
from mesh.deadlines import Deadlines
from mesh.edge.hop import Hop, Metadata, Peers, Route
from mesh.load_claims import LoadClaims
from mesh.management import ModelManager
from mesh.placement_view import PlacementView, explain
from mesh.records import LOADED, InstanceRecord, Mine, ModelRecord, ModelState
from mesh.registry import ModelStore
from mesh.route_tries import Suspects, Tries, load_failed
from mesh_common.errors import (
    DeadlineExceeded,
    LoadLost,
    MeshError,
    ModelLoadFailed,
    NotHere,
    Unavailable,
    quoted,
)
from placement.loading import choose_copy

log = logging.getLogger(__name__)

_SHED_MIN = 0.05
"""A copy serving this little above its share keeps all its calls (a hop costs more)."""

Local = Callable[[str], Awaitable[bytes]]
Forward = Callable[[str, Hop, float], Awaitable[bytes]]
"""Sends a try to a peer: its endpoint, the hop, the time left (s)."""


class Target(NamedTuple):
    """Where the next try goes, how, and why there."""

    pod_id: str
    route: Route
    why: str = ""
    """For a load placement chose: the decision in one line (kept in the copy record)."""


class Router:
    """The request path of one pod. Owns the calls in flight by serving pod (shared with the
    ``PlacementView``, which counts them against each pod) and the pods it skips for a while."""

    def __init__(
        self,
        *,
        pod_id: str,
        store: ModelStore,
        manager: ModelManager,
        cache: ModelCache,
        peers: Peers,
        placement: PlacementView,
        in_flight: Counter[str],
        attempts: int,
        suspect_s: float,
    ) -> None:
        self.pod_id = pod_id
        self._store = store
        self._manager = manager
        self._cache = cache
        self._peers = peers
        self._placement = placement
        self._attempts = attempts
        self._suspects = Suspects(suspect_s)
        self._claims = LoadClaims(pod_id=pod_id, store=store, manager=manager)
        self.in_flight = in_flight
        """Calls this pod is serving or forwarding, by the pod serving them."""
        self.served = 0
        """Calls served on this pod so far."""
        self._calls = itertools.count()
        self._deadlines = Deadlines()
        """Bounds calls served here or forwarded by their deadline (one timer for all of them)."""

    async def call(
        self,
        name: str,
        vmodel: bool | None,
        *,
        method: str,
        payload: bytes,
        local: Local,
        deadline: float,
        metadata: Metadata = (),
    ) -> bytes:
        """Serve a call that entered at this pod, here or on a peer."""
        model_id = (await self._manager.lookup_fresh(name, vmodel=vmodel)).model_id

        async def forward(endpoint: str, hop: Hop, timeout_s: float) -> bytes:
            return await self._peers.forward(
                endpoint, method, payload, hop=hop, timeout_s=timeout_s, metadata=metadata
            )

        return await self._attempt(model_id, local, forward, deadline)

    async def load(self, name: str, *, vmodel: bool | None, deadline: float) -> None:
        """Load the model a name resolves to somewhere in the fleet."""
        model_id = (await self._manager.lookup_fresh(name, vmodel=vmodel)).model_id
        await self.ensure_loaded(model_id, deadline=deadline)

    async def ensure_loaded(
        self, model_id: str, *, deadline: float, excluded: frozenset[str] = frozenset()
    ) -> None:
        """Load ``model_id`` somewhere in the fleet (no-op if it is loaded anywhere live)."""

        async def local(model_id: str) -> bytes:
            await self._manager.load_here(model_id)
            return b""

        async def forward(endpoint: str, hop: Hop, timeout_s: float) -> bytes:
            if hop.route == Route.LOAD:
                await self._peers.load(endpoint, hop=hop, timeout_s=timeout_s)
            return b""

        await self._attempt(model_id, local, forward, deadline, excluded)

    async def serve_forwarded(
        self,
        model_id: str,
        route: Route,
        local: Local,
        *,
        ignore: frozenset[str] = frozenset(),
        why: str = "",
    ) -> bytes:
        """Serve a call another pod forwarded here; never forwards it again.

        ``ignore``: pods the sender found unreachable; their claims on the model do not count.
        ``why``: the sender's reason for choosing this pod, kept in the copy record.
        """
        here = self._cache.loaded(model_id) is not None or self._cache.loading(model_id)
        if route == Route.LOADED and not here:
            raise NotHere(f"model {quoted(model_id)} is not loaded on {self.pod_id}", pod_id=self.pod_id)
        if not here:
            if self._store.model(model_id) is None:  # the sender knows it: this pod's watch is behind
                await self._store.fetch_model(model_id)
            self._manager.record(model_id)  # unknown model: NOT_FOUND, not "not here"
            ignore = ignore | self._suspects.suspected()
            serve = functools.partial(self._serve_here, model_id, local)
            return await self._claims.claimed(
                model_id, serve, ignore=ignore, why=why, extra_copy=route == Route.COPY
            )
        return await self._serve_here(model_id, local)

    # the tries

    async def _attempt(
        self,
        model_id: str,
        local: Local,
        forward: Forward,
        deadline: float,
        excluded_at_start: frozenset[str] = frozenset(),
    ) -> bytes:
        tries = Tries(model_id, excluded_at_start)
        attempts = 0
        while attempts < self._attempts:
            if deadline - time.monotonic() <= 0:
                break
            try:
                target = self._target(model_id, tries)
            except LoadLost as exc:  # wait for the registry to learn the silent pod's fate
                if await self._mirror_changes(model_id, deadline):
                    continue
                raise tries.refused(exc) from None
            except MeshError as exc:
                raise tries.refused(exc) from None
            attempts += 1
            try:
                return await self._try(target, local, forward, deadline, tries)
            except TimeoutError:  # the bound below: out of time is not the peer's fault
                error: MeshError = DeadlineExceeded("no answer in time")
            except MeshError as exc:
                if exc.final:
                    raise
                error = exc
            if target.pod_id != self.pod_id:
                self._suspects.suspect(target.pod_id, error)
            if not tries.note(target.pod_id, error):
                break
        raise tries.spent(deadline)

    async def _try(
        self, target: Target, local: Local, forward: Forward, deadline: float, tries: Tries
    ) -> bytes:
        model_id = tries.model_id
        if target.pod_id == self.pod_id:
            if target.route == Route.LOAD and not self._cache.loading(model_id):
                ignore = frozenset(tries.excluded) | self._suspects.suspected()
                serve = functools.partial(self._serve_until, model_id, local, deadline)
                return await self._claims.claimed(model_id, serve, ignore=ignore, why=target.why)
            return await self._serve_until(model_id, local, deadline)
        hop = Hop(model_id, target.route)
        if target.route == Route.LOAD:  # the pods to ignore and why placement chose the receiver
            hop = Hop(model_id, target.route, self._suspects.suspected(), target.why)
        # The peer call carries the deadline too; this bound holds whatever the transport does.
        remaining = deadline - time.monotonic()
        return await self._deadlines.run(self._forward(target.pod_id, hop, forward, remaining), deadline)

    async def _serve_until(self, model_id: str, local: Local, deadline: float) -> bytes:
        return await self._deadlines.run(self._serve_here(model_id, local), deadline)

    async def _serve_here(self, model_id: str, local: Local) -> bytes:
        self.in_flight[self.pod_id] += 1
        self.served += 1
        try:
            return await local(model_id)
        finally:
            self.in_flight[self.pod_id] -= 1

    async def _forward(self, pod_id: str, hop: Hop, forward: Forward, timeout_s: float) -> bytes:
        instance = self._store.instance(pod_id)
        if instance is None:
            raise Unavailable(f"pod {pod_id} left the fleet")
        if hop.route == Route.LOAD:
            self._placement.load_sent(pod_id)
        self.in_flight[pod_id] += 1
        try:
            return await forward(instance.endpoint, hop, timeout_s)
        finally:
            self.in_flight[pod_id] -= 1

    async def _mirror_changes(self, model_id: str, deadline: float) -> bool:
        """Wait until the mirror changes the model's record or any pod's (a lease ending, the
        janitor recording a death while loading): True, or False when the deadline comes first."""
        changed = asyncio.Event()

        def listener(kind: str, record_id: str, _record: object) -> None:
            if kind == "instances" or (kind == "models" and record_id == model_id):
                changed.set()

        self._store.subscribe(listener)
        try:
            async with asyncio.timeout_at(_loop_time(deadline)):
                await changed.wait()
            return True
        except TimeoutError:
            return False
        finally:
            self._store.unsubscribe(listener)

    # where the next try goes

    def _target(self, model_id: str, tries: Tries) -> Target:
        """The pod to try next, how (``loaded`` or ``load``) and why there.

        Raises:
            ModelLoadFailed: the model is blocked, or failed on every pod that may load it.
            LoadLost: it was loading on a pod that may have died of it, whose fate is not yet
                recorded (the caller waits for the registry: ``_mirror_changes``).
            Unavailable: no pod is eligible to load it now.
        """
        suspected = self._suspects.suspected()
        excluded = tries.excluded | suspected if suspected else tries.excluded
        if self.pod_id not in excluded and (
            self._cache.loaded(model_id) is not None or self._cache.loading(model_id)
        ):
            if self._cache.loaded(model_id) is None:
                return Target(self.pod_id, Route.LOAD)
            other = self._shed(model_id, excluded)
            return Target(other, Route.LOADED) if other is not None else Target(self.pod_id, Route.LOADED)
        record = self._manager.record_any(model_id)
        if record.blocked:  # it killed the pods that loaded it: no pod tries again
            raise ModelLoadFailed(model_id=model_id, reason=record.blocked)
        live = self._store.instances()
        holder = self._holder(record, excluded, live)
        if holder is not None:
            return holder
        silent = self._lost_load(record, live, self._suspects.silent(suspected))
        if silent is not None:
            raise LoadLost(
                f"model {quoted(model_id)} was loading on {silent}, which stopped answering and may have "
                f"died of it: no other pod loads it until {silent}'s lease has ended and its fate is "
                "recorded; retry later",
                model_id=model_id,
            )
        return self._placed(record, excluded, tries)

    def _holder(
        self, record: ModelRecord, excluded: Collection[str], live: Mapping[str, InstanceRecord]
    ) -> Target | None:
        """A live peer holding the model (the least busy), else one loading it (join its load)."""
        counted = record.counted_copies(live, here=self.pod_id, mine=Mine.NEVER, excluded=excluded)
        copies = {pod: copy.state for pod, copy in counted.items()}
        salt = f"{record.model_id}:{next(self._calls)}"
        for state, route in ((ModelState.LOADED, Route.LOADED), (ModelState.LOADING, Route.LOAD)):
            holder = choose_copy([p for p, s in copies.items() if s is state], self.in_flight, salt=salt)
            if holder is not None:
                return Target(holder, route)
        return None

    def _placed(self, record: ModelRecord, excluded: Collection[str], tries: Tries) -> Target:
        """The pod placement chooses to load the model, with its reason."""
        decision = self._placement.choose(record, excluded, tries.load_failures)
        if decision.pod_id is None:
            failures: dict[str, MeshError | str] = {
                **self._placement.recent_failures(record),
                **tries.load_failures,
            }
            if failures:
                raise load_failed(record.model_id, failures)
            message = f"no pod can load model {quoted(record.model_id)}: {decision.reason}"
            raise Unavailable(message, model_id=record.model_id)
        return Target(decision.pod_id, Route.LOAD, explain(decision, self.pod_id))

    def _lost_load(self, record: ModelRecord, live: Collection[str], silent: Collection[str]) -> str | None:
        """A pod whose copy of the model is LOADING but that may have died: its instance record is
        gone (its lease ended, and the janitor has not counted its copy yet), or it gave no answer
        at all to a call from this pod (``silent``: its process may be gone, its record not yet).
        It may have died of this very model: loading it elsewhere now could kill the next pod too,
        so no pod does until the registry knows (``ModelManager.forget_dead_pods`` turns the copy
        into a crash of the model). A pod that answered, however slowly or with an error, is alive:
        the model loads elsewhere."""
        return next(
            (
                pod
                for pod, copy in sorted(record.copies.items())
                if copy.state is ModelState.LOADING
                and pod != self.pod_id
                and (pod not in live or pod in silent)
            ),
            None,
        )

    def _shed(self, model_id: str, excluded: Collection[str]) -> str | None:
        """Another copy to send this call to, when this pod serves more than its share of the model.

        A copy here serves the calls entering here, so without shedding a copy added elsewhere
        for a hot model would stay idle. This pod sends the excess fraction of its calls (its
        rate above the copies' mean, over its rate) to the least busy other copy, at random;
        rates are the published recent averages, so the split settles near even.
        """
        # On the request path: plain lookups, no copy of the live pods.
        me = self._store.instance(self.pod_id)
        mine = me.hot.get(model_id) if me is not None else None
        if mine is None or mine.rate <= 0:
            return None
        peers = self._other_copies(model_id, excluded)
        if not peers:
            return None
        rates = [t.rate for instance in peers.values() if (t := instance.hot.get(model_id)) is not None]
        fair = (mine.rate + sum(rates)) / (len(peers) + 1)
        excess = (mine.rate - fair) / mine.rate
        if excess <= _SHED_MIN or random.random() >= excess:
            return None
        return choose_copy(list(peers), self.in_flight, salt=f"{model_id}:{next(self._calls)}")

    def _other_copies(self, model_id: str, excluded: Collection[str]) -> dict[str, InstanceRecord]:
        """The other live pods, not leaving, that hold the model loaded."""
        record = self._store.model(model_id)
        if record is None:
            return {}
        # No live set: each holder's instance record is looked up once.
        holders = record.counted_copies(
            None, states=LOADED, here=self.pod_id, mine=Mine.NEVER, excluded=excluded
        )
        return {
            pod: instance
            for pod in holders
            if (instance := self._store.instance(pod)) is not None and not instance.shutting_down
        }


def _loop_time(deadline: float) -> float:
    """``deadline`` (``time.monotonic``) on the event loop's clock."""
    return asyncio.get_running_loop().time() + (deadline - time.monotonic())
