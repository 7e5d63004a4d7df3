"""Where a call runs: here, on a pod that holds the model, or on the pod placement picks.

Transport-free: the edge hands over the raw request bytes and a ``local`` callable that
serves them on this pod; peers are reached through the ``Peers`` interface.

One call, at most ``attempts`` tries, all within the caller's deadline:

1. The model is loaded here -> serve here.
2. Loaded (or loading) on other live pods -> forward to the one with the fewest calls
   in flight, "serve only if loaded" (or "join the load").
3. Loaded nowhere -> ``placement.loading.choose_load_pod`` ranks the pods; the chosen
   pod claims the load in the registry (compare-and-swap, so two pods never load one
   model at once), loads and serves. This pod may be the chosen one.

A pod that answers "not here", fails the load, has no room or does not answer is
excluded and the next try picks again from a fresh view. A forwarded call is served
where it lands or refused there ("not here"): it is never forwarded again, so no call
loops. Exhausted tries end in ``Unavailable`` with every reason (``ModelLoadFailed``
with each pod's reason when loads failed), never ``INTERNAL``.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import replace
from typing import Protocol

from mesh.cache import ModelCache
from mesh.deadlines import Deadlines
from mesh.management import ModelManager
from mesh.records import CopyRecord, InstanceRecord, ModelRecord, ModelState
from mesh.registry import ModelStore
from mesh_common.clock import now_ms
from mesh_common.errors import (
    Busy,
    CapacityExceeded,
    DeadlineExceeded,
    MeshError,
    ModelLoadFailed,
    NotHere,
    QuotaExceeded,
    Unavailable,
    Unreachable,
    quoted,
)
from placement.cluster import ClusterView, ModelView, PodView
from placement.loading import LoadDecision, choose_copy, choose_load_pod
from placement.quotas import TenantCopy, tenant_victims

log = logging.getLogger(__name__)

LOADED = "loaded"
LOAD = "load"
LOCAL = "local"
"""A fleet-wide read: answer from this pod alone."""
COPY = "copy"
"""Load one more copy here even though other pods hold the model (the janitor scaling it)."""
EXCLUDE = "mesh-exclude"
"""Metadata on a forwarded load: pods the sender found unreachable, whose claims the receiver ignores."""
WHY = "mesh-why-bin"
"""Metadata on a forwarded load: why placement chose the receiver (kept in its copy record); on a
dropped copy: why (kept in the model's history). UTF-8: reasons may quote model ids."""
_NONE: frozenset[str] = frozenset()
_SHED_MIN = 0.05
"""A copy serving this little above its share keeps all its calls (a hop costs more)."""
_PENDING_S = 2.0
"""How long a load this pod sent elsewhere counts against that pod (until its record shows it)."""

Metadata = Sequence[tuple[str, str | bytes]]
Local = Callable[[str], Awaitable[bytes]]
Forward = Callable[[str, str, float], Awaitable[bytes]]


class Peers(Protocol):
    async def forward(
        self,
        endpoint: str,
        method: str,
        payload: bytes,
        *,
        model_id: str,
        route: str,
        timeout_s: float,
        metadata: Metadata = (),
    ) -> bytes: ...

    async def load(
        self, endpoint: str, *, model_id: str, timeout_s: float, metadata: Metadata = (), route: str = LOAD
    ) -> None: ...

    async def unload(
        self, endpoint: str, *, model_id: str, timeout_s: float, metadata: Metadata = ()
    ) -> None: ...


class Router:
    def __init__(
        self,
        *,
        pod_id: str,
        store: ModelStore,
        manager: ModelManager,
        cache: ModelCache,
        peers: Peers,
        describe_self: Callable[[], InstanceRecord],
        attempts: int,
        failure_ttl_s: float,
        suspect_s: float,
    ) -> None:
        self.pod_id = pod_id
        self._store = store
        self._manager = manager
        self._cache = cache
        self._peers = peers
        self._describe_self = describe_self
        self._attempts = attempts
        self._failure_ttl_ms = int(failure_ttl_s * 1000)
        self._suspect_s = suspect_s
        self._suspects: dict[str, float] = {}
        """Pods that did not answer, until when (monotonic) they are skipped; their lease may
        not have expired yet."""
        self._unreachable: dict[str, float] = {}
        """Of those, pods that gave no answer at all (``Unreachable``), until when: their process
        may be gone though their instance record has not gone yet."""
        self.in_flight: Counter[str] = Counter()
        """Calls this pod is serving or forwarding, by the pod serving them."""
        self.served = 0
        """Calls served on this pod so far."""
        self._sent_loads: dict[str, list[float]] = {}
        self._calls = itertools.count()
        self._deadlines = Deadlines()
        """Bounds calls served here or forwarded by their deadline (one timer for all of them)."""
        self.last_decision: dict[str, LoadDecision] = {}
        """The latest placement decision per model made here (for ``mesh status``)."""

    # entry points

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

        async def forward(endpoint: str, route: str, timeout_s: float) -> bytes:
            return await self._peers.forward(
                endpoint,
                method,
                payload,
                model_id=model_id,
                route=route,
                timeout_s=timeout_s,
                metadata=(*metadata, *self._load_metadata(model_id, route)),
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

        async def forward(endpoint: str, route: str, timeout_s: float) -> bytes:
            if route == LOAD:
                extra = self._load_metadata(model_id, route)
                await self._peers.load(endpoint, model_id=model_id, timeout_s=timeout_s, metadata=extra)
            return b""

        await self._attempt(model_id, local, forward, deadline, excluded)

    async def unload(self, name: str, *, vmodel: bool | None, deadline: float) -> None:
        """Unload the model a name resolves to on every pod that holds it (this one included).

        Peers are asked at once; ``Unavailable`` names the pods that could not be reached
        (their copies stay until they answer or their lease expires; retrying is safe).
        """
        model_id = (await self._manager.lookup_fresh(name, vmodel=vmodel)).model_id
        record = self._manager.record_any(model_id)
        live = self._store.instances()
        holders = sorted(pod for pod in record.copies if pod in live and pod != self.pod_id)
        timeout_s = max(deadline - time.monotonic(), 0.001)

        async def unload_on(pod_id: str) -> None:
            await self._peers.unload(live[pod_id].endpoint, model_id=model_id, timeout_s=timeout_s)

        results = await asyncio.gather(
            self._cache.unload(model_id), *(unload_on(pod) for pod in holders), return_exceptions=True
        )
        failed = []
        for pod_id, result in zip((self.pod_id, *holders), results, strict=True):
            if isinstance(result, MeshError):
                failed.append(f"{pod_id}: {result.message}")
            elif isinstance(result, BaseException):
                raise result
        if failed:
            raise Unavailable(
                f"model {quoted(model_id)} could not be unloaded everywhere: {'; '.join(failed)}",
                model_id=model_id,
            )

    async def ask_every_pod(
        self, method: str, payload: bytes, *, key: str, deadline: float
    ) -> list[tuple[str, bytes | MeshError]]:
        """Send one call to every other live pod at once (fleet-wide reads such as statistics).

        Returns each pod's answer or error; ``key`` travels as the hop's model id.
        """
        peers = {pod: i.endpoint for pod, i in self._store.instances().items() if pod != self.pod_id}
        timeout_s = max(deadline - time.monotonic(), 0.001)

        async def ask(endpoint: str) -> bytes:
            return await self._peers.forward(
                endpoint, method, payload, model_id=key, route=LOCAL, timeout_s=timeout_s
            )

        results = await asyncio.gather(*(ask(e) for e in peers.values()), return_exceptions=True)
        answers: list[tuple[str, bytes | MeshError]] = []
        for pod_id, result in zip(peers, results, strict=True):
            if isinstance(result, (bytes, MeshError)):
                answers.append((pod_id, result))
            else:
                raise result
        return answers

    async def serve_forwarded(
        self,
        model_id: str,
        route: str,
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
        if route == LOADED and not here:
            raise NotHere(f"model {quoted(model_id)} is not loaded on {self.pod_id}", pod_id=self.pod_id)
        if not here:
            if self._store.model(model_id) is None:  # the sender knows it: this pod's watch is behind
                await self._store.fetch_model(model_id)
            self._manager.record(model_id)  # unknown model: NOT_FOUND, not "not here"
            ignore = ignore | self._suspected()
            serve = functools.partial(self._serve_here, model_id, local)
            return await self._claimed(model_id, serve, ignore=ignore, why=why, extra_copy=route == COPY)
        return await self._serve_here(model_id, local)

    async def add_copy(self, model_id: str, pod_id: str, *, why: str, deadline: float) -> None:
        """Load one more copy of ``model_id`` on ``pod_id`` (other pods may hold it already)."""
        timeout_s = max(deadline - time.monotonic(), 0.001)
        if pod_id == self.pod_id:

            async def local(model_id: str) -> bytes:
                await self._manager.load_here(model_id)
                return b""

            async with asyncio.timeout(timeout_s):
                await self.serve_forwarded(model_id, COPY, local, why=why)
            return
        instance = self._store.instance(pod_id)
        if instance is None:
            raise Unavailable(f"pod {pod_id} left the fleet")
        await self._peers.load(
            instance.endpoint,
            model_id=model_id,
            timeout_s=timeout_s,
            metadata=((WHY, why.encode()),),
            route=COPY,
        )

    async def drop_copy(self, model_id: str, pod_id: str, *, why: str, deadline: float) -> None:
        """Unload the copy of ``model_id`` on ``pod_id`` only (after its calls in flight finish); the
        unloading pod records ``why`` with the unload in the model's history."""
        if pod_id == self.pod_id:
            await self._cache.unload(model_id, reason=why)
            return
        instance = self._store.instance(pod_id)
        if instance is None:
            return  # gone, and its copy with it
        timeout_s = max(deadline - time.monotonic(), 0.001)
        await self._peers.unload(
            instance.endpoint, model_id=model_id, timeout_s=timeout_s, metadata=((WHY, why.encode()),)
        )

    async def make_tenant_room(self, record: ModelRecord, size_bytes: int, *, deadline: float) -> None:
        """Before ``record`` loads here: keep its tenant under its loaded-bytes cap by unloading the
        tenant's own coldest copies anywhere in the fleet (``placement.quotas``), or refuse the load."""
        quota = self._store.tenant(record.tenant)
        if quota is None or not quota.max_loaded_bytes:
            return
        cap = quota.max_loaded_bytes
        tenant = record.tenant
        copies = self.tenant_copies([tenant], loading=record)[tenant]
        victims = tenant_victims(copies, cap_bytes=cap, need_bytes=size_bytes, loading_pod=self.pod_id)
        if victims is None:
            used = sum(c.size_bytes for c in copies)
            raise QuotaExceeded(
                f"tenant {quoted(tenant)} has {used} bytes loaded across the fleet and model "
                f"{quoted(record.model_id)} needs {size_bytes} more; its loaded-bytes cap is {cap} bytes "
                "and no idle model of the tenant can make room",
                tenant=tenant,
                cap="max_loaded_bytes",
            )
        for victim in victims:
            why = (
                f"tenant {quoted(tenant)} at its loaded-bytes cap ({cap} bytes): "
                f"room for {quoted(record.model_id)}"
            )
            log.info("unloading %s from %s: %s", victim.model_id, victim.pod_id, why)
            try:
                await self.drop_copy(victim.model_id, victim.pod_id, why=why, deadline=deadline)
            except MeshError as exc:
                raise Unavailable(
                    f"tenant {quoted(tenant)} is at its loaded-bytes cap and its model "
                    f"{quoted(victim.model_id)} "
                    f"could not be unloaded from {victim.pod_id} to make room: {exc.message}",
                    model_id=record.model_id,
                ) from None

    def tenant_copies(
        self, tenants: Collection[str], *, loading: ModelRecord | None = None
    ) -> dict[str, list[TenantCopy]]:
        """Every live copy of the given tenants' models (but ``loading`` about to load here), by tenant."""
        live = self._store.instances()
        here = {m.model_id: m for m in self._cache.models()}
        now_wall, now_mono = now_ms(), time.monotonic()
        copies: dict[str, list[TenantCopy]] = {tenant: [] for tenant in tenants}
        for r in (r for tenant in tenants for r in self._store.models_of(tenant)):
            found = copies[r.tenant]
            for pod_id, copy in r.copies.items():
                if copy.state not in (ModelState.LOADED, ModelState.LOADING):
                    continue
                if (pod_id not in live and pod_id != self.pod_id) or (
                    loading is not None and r.model_id == loading.model_id and pod_id == self.pod_id
                ):
                    continue
                traffic = live[pod_id].hot.get(r.model_id) if pod_id in live else None
                busy = copy.state is ModelState.LOADING
                last_used = copy.since_ms
                if pod_id == self.pod_id:
                    cached = here.get(r.model_id)
                    busy = busy or cached is None or not cached.loaded or cached.in_use > 0
                    if cached is not None:
                        last_used = now_wall - int((now_mono - cached.last_used) * 1000)
                rate = traffic.rate if traffic is not None else 0.0
                found.append(TenantCopy(r.model_id, pod_id, r.size_bytes, rate, last_used, busy))
        return copies

    async def claim(
        self,
        model_id: str,
        *,
        ignore: frozenset[str] = frozenset(),
        why: str = "",
        extra_copy: bool = False,
    ) -> None:
        """Record this pod as loading ``model_id`` unless another live pod holds or loads it
        (``extra_copy``: even then: the janitor is adding a copy)."""
        holder = ""
        live = {
            pod
            for pod, instance in self._store.instances().items()
            if pod not in ignore and not instance.shutting_down  # a leaving pod's copy goes with it
        }

        def change(record: ModelRecord) -> ModelRecord:
            nonlocal holder
            holder = (
                ""
                if extra_copy
                else next(
                    (
                        pod
                        for pod, copy in sorted(record.copies.items())
                        if pod != self.pod_id
                        and pod in live
                        and copy.state in (ModelState.LOADED, ModelState.LOADING)
                    ),
                    "",
                )
            )
            if holder or self.pod_id in record.copies:
                return record
            copy = CopyRecord(ModelState.LOADING, now_ms(), why)
            return replace(record, copies={**record.copies, self.pod_id: copy})

        try:
            await self._store.update_model(model_id, change)
        except Unavailable as exc:  # registry down: serving beats a perfect record
            log.warning("could not claim the load of %s in the registry (%s); loading anyway", model_id, exc)
            return
        if holder:
            message = f"pod {holder} already holds model {quoted(model_id)}"
            raise NotHere(message, pod_id=self.pod_id, holder=holder)

    async def _claimed(
        self,
        model_id: str,
        serve: Callable[[], Awaitable[bytes]],
        *,
        ignore: frozenset[str],
        why: str,
        extra_copy: bool = False,
    ) -> bytes:
        """``claim`` the load here, then ``serve``. A claim whose load never started in the cache
        (the call was cancelled, or refused before it reached the cache) is dropped when the call
        ends: left LOADING, it would count as a crash of the model once this pod's lease ended."""
        try:
            await self.claim(model_id, ignore=ignore, why=why, extra_copy=extra_copy)
            return await serve()
        finally:
            await self._manager.drop_claim(model_id)

    # the loop

    async def _attempt(
        self,
        model_id: str,
        local: Local,
        forward: Forward,
        deadline: float,
        excluded_at_start: frozenset[str] = frozenset(),
    ) -> bytes:
        excluded = set(excluded_at_start)
        reasons: list[str] = []
        load_failures: dict[str, str] = {}
        no_room: MeshError | None = None
        timed_out = False
        for _ in range(self._attempts):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                pod_id, route = self._target(model_id, excluded, load_failures)
            except MeshError:
                if no_room is not None and not load_failures:
                    raise no_room from None  # RESOURCE_EXHAUSTED: room may come later
                raise
            try:
                if pod_id == self.pod_id:
                    if route == LOAD and not self._cache.loading(model_id):
                        decision = self.last_decision.get(model_id)
                        why = explain(decision, self.pod_id) if decision is not None else ""
                        ignore = frozenset(excluded) | self._suspected()
                        serve = functools.partial(self._serve_until, model_id, local, deadline)
                        return await self._claimed(model_id, serve, ignore=ignore, why=why)
                    return await self._serve_until(model_id, local, deadline)
                # The peer call carries the deadline too; this bound holds whatever the transport does.
                return await self._deadlines.run(self._forward(pod_id, route, forward, remaining), deadline)
            except (TimeoutError, DeadlineExceeded) as exc:
                # Out of time is not the peer's fault: it is not suspected, and no try is left.
                reasons.append(f"{pod_id}: {getattr(exc, 'message', 'no answer in time')}")
                timed_out = True
                break
            except ModelLoadFailed as exc:
                load_failures[pod_id] = exc.reason
                excluded.add(pod_id)
            except (Busy, CapacityExceeded) as exc:
                no_room = exc
                reasons.append(f"{pod_id}: {exc.message}")
                excluded.add(pod_id)
            except NotHere as exc:
                reasons.append(f"{pod_id}: {exc.message}")
                excluded.add(pod_id)
            except Unavailable as exc:
                reasons.append(f"{pod_id}: {exc.message}")
                excluded.add(pod_id)
                if pod_id != self.pod_id:
                    self._suspects[pod_id] = time.monotonic() + self._suspect_s
                    if isinstance(exc, Unreachable):
                        self._unreachable[pod_id] = self._suspects[pod_id]
        if load_failures:
            raise self._load_failed(model_id, load_failures)
        if no_room is not None and len(reasons) == 1:
            raise no_room
        if timed_out or time.monotonic() >= deadline:
            tried = "; ".join(reasons) or "no pod answered in time"
            message = f"model {quoted(model_id)}: the deadline passed ({tried})"
            raise DeadlineExceeded(message, model_id=model_id)
        raise Unavailable(
            f"model {quoted(model_id)} could not be served after {len(reasons)} attempt(s): "
            f"{'; '.join(reasons)}",
            model_id=model_id,
        )

    async def _serve_until(self, model_id: str, local: Local, deadline: float) -> bytes:
        return await self._deadlines.run(self._serve_here(model_id, local), deadline)

    async def _serve_here(self, model_id: str, local: Local) -> bytes:
        self.in_flight[self.pod_id] += 1
        self.served += 1
        try:
            return await local(model_id)
        finally:
            self.in_flight[self.pod_id] -= 1

    async def _forward(
        self,
        pod_id: str,
        route: str,
        forward: Callable[[str, str, float], Awaitable[bytes]],
        timeout_s: float,
    ) -> bytes:
        instance = self._store.instance(pod_id)
        if instance is None:
            raise Unavailable(f"pod {pod_id} left the fleet")
        if route == LOAD:
            self._sent_loads.setdefault(pod_id, []).append(time.monotonic())
        self.in_flight[pod_id] += 1
        try:
            return await forward(instance.endpoint, route, timeout_s)
        finally:
            self.in_flight[pod_id] -= 1

    def _suspected(self) -> frozenset[str]:
        if not self._suspects:  # on every call: nothing to prune
            return _NONE
        now = time.monotonic()
        self._suspects = {pod: until for pod, until in self._suspects.items() if until > now}
        return frozenset(self._suspects)

    def _silent(self, suspected: frozenset[str]) -> frozenset[str]:
        """The suspected pods that gave no answer at all (``_suspected`` prunes both)."""
        if not self._unreachable:
            return _NONE
        self._unreachable = {pod: until for pod, until in self._unreachable.items() if pod in suspected}
        return frozenset(self._unreachable)

    def forget(self, model_id: str) -> None:
        """Drop what this pod kept about a model that is no longer registered."""
        self.last_decision.pop(model_id, None)

    def _load_metadata(self, model_id: str, route: str) -> Metadata:
        """On a forwarded load: the pods to ignore and why placement chose the receiver."""
        if route != LOAD:
            return ()
        skipped = self._suspected()
        extra: list[tuple[str, str | bytes]] = [(EXCLUDE, ",".join(sorted(skipped)))] if skipped else []
        decision = self.last_decision.get(model_id)
        if decision is not None and decision.pod_id is not None:
            extra.append((WHY, explain(decision, self.pod_id).encode()))
        return extra

    def _target(self, model_id: str, excluded: set[str], load_failures: dict[str, str]) -> tuple[str, str]:
        """The pod to try next and how (``loaded`` or ``load``)."""
        suspected = self._suspected()
        if suspected:
            excluded = excluded | suspected
        if self.pod_id not in excluded and (
            self._cache.loaded(model_id) is not None or self._cache.loading(model_id)
        ):
            if self._cache.loaded(model_id) is None:
                return self.pod_id, LOAD
            other = self._shed(model_id, excluded)
            return (other, LOADED) if other is not None else (self.pod_id, LOADED)
        record = self._manager.record_any(model_id)
        if record.blocked:  # it killed the pods that loaded it: no pod tries again
            raise ModelLoadFailed(model_id=model_id, reason=record.blocked)
        live = self._store.instances()
        copies = {
            pod: copy.state
            for pod, copy in record.copies.items()
            if pod not in excluded and pod in live and pod != self.pod_id
        }
        loaded = [pod for pod, state in copies.items() if state is ModelState.LOADED]
        salt = f"{model_id}:{next(self._calls)}"
        holder = choose_copy(loaded, self.in_flight, salt=salt)
        if holder is not None:
            return holder, LOADED
        loading = [pod for pod, state in copies.items() if state is ModelState.LOADING]
        holder = choose_copy(loading, self.in_flight, salt=salt)
        if holder is not None:
            return holder, LOAD
        silent = self._lost_load(record, live, self._silent(suspected))
        if silent is not None:
            raise Unavailable(
                f"model {quoted(model_id)} was loading on {silent}, which stopped answering and may have "
                f"died of it: no other pod loads it until {silent}'s lease has ended and its fate is "
                "recorded; retry later",
                model_id=model_id,
            )
        decision = choose_load_pod(self.view(excluded), self._model_view(record, load_failures))
        self.last_decision[model_id] = decision
        if decision.pod_id is None:
            failures = self._recent_failures(record) | load_failures
            if failures:
                raise self._load_failed(model_id, failures)
            message = f"no pod can load model {quoted(model_id)}: {decision.reason}"
            raise Unavailable(message, model_id=model_id)
        return decision.pod_id, LOAD

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

    def _shed(self, model_id: str, excluded: set[str]) -> str | None:
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
        record = self._store.model(model_id)
        if record is None:
            return None
        peers = {
            pod: instance
            for pod, copy in record.copies.items()
            if copy.state is ModelState.LOADED
            and pod != self.pod_id
            and pod not in excluded
            and (instance := self._store.instance(pod)) is not None
            and not instance.shutting_down
        }
        others = list(peers)
        if not others:
            return None
        rates = [t.rate for instance in peers.values() if (t := instance.hot.get(model_id)) is not None]
        fair = (mine.rate + sum(rates)) / (len(others) + 1)
        excess = (mine.rate - fair) / mine.rate
        if excess <= _SHED_MIN or random.random() >= excess:
            return None
        return choose_copy(others, self.in_flight, salt=f"{model_id}:{next(self._calls)}")

    # snapshots for placement

    def view(self, excluded: set[str] | frozenset[str] = frozenset()) -> ClusterView:
        instances = self._store.instances()
        instances[self.pod_id] = self._describe_self()
        now = time.monotonic()
        pods = []
        for pod_id, instance in sorted(instances.items()):
            used, loads = instance.used_bytes, instance.loads_in_flight
            if pod_id != self.pod_id:
                # Another pod's record can be a publish interval old: add the copies it recorded
                # since, and the loads sent from here that it may not have recorded yet.
                sent = [t for t in self._sent_loads.get(pod_id, []) if now - t < _PENDING_S]
                self._sent_loads[pod_id] = sent
                fresh = self._store.unpublished(pod_id)
                used = min(used + fresh.bytes, instance.capacity_bytes)
                loads += max(len(sent), fresh.loads)
            pods.append(
                PodView(
                    pod_id=pod_id,
                    capacity_bytes=instance.capacity_bytes,
                    used_bytes=used,
                    oldest_used_ms=instance.oldest_used_ms,
                    loads_in_flight=loads,
                    requests_in_flight=max(instance.requests_in_flight, self.in_flight[pod_id]),
                    request_rate=instance.request_rate,
                    labels=frozenset(instance.labels),
                    shutting_down=instance.shutting_down,
                )
            )
        return ClusterView(tuple(pods), now_ms(), frozenset(excluded))

    def _model_view(self, record: ModelRecord, load_failures: dict[str, str]) -> ModelView:
        holders = frozenset(
            pod
            for pod, c in record.copies.items()
            if c.state in (ModelState.LOADED, ModelState.LOADING) and pod != self.pod_id
        )
        failed = frozenset(self._recent_failures(record)) | frozenset(load_failures)
        return ModelView(record.model_id, record.info.type, record.size_bytes, holders, failed)

    def _recent_failures(self, record: ModelRecord) -> dict[str, str]:
        recent = record.recent_failures(now_ms=now_ms(), failure_ttl_ms=self._failure_ttl_ms)
        return {pod: failure.reason for pod, failure in recent.items()}

    def _load_failed(self, model_id: str, failures: dict[str, str]) -> ModelLoadFailed:
        if len(failures) == 1:
            return ModelLoadFailed(model_id=model_id, reason=next(iter(failures.values())))
        reason = "; ".join(f"{pod}: {why}" for pod, why in sorted(failures.items()))
        return ModelLoadFailed(model_id=model_id, reason=reason)


def explain(decision: LoadDecision, decided_by: str) -> str:
    """One line for a copy record: the winner's score and the runner-up's."""
    best = decision.ranked[0]
    fits = " (fits)" if best.fits else " (evicts)"
    text = f"placed on {best.pod_id} by {decided_by}: score {best.score:.2f}{fits}"
    runner = decision.runner_up
    if runner is None:
        return text + ", the only eligible pod"
    return text + f" vs runner-up {runner.pod_id} {runner.score:.2f}"
