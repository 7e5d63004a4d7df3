"""Calls that reach every pod at once: a model unloaded everywhere (``RepositoryModelUnload``)
and a fleet-wide read such as statistics, where the fleet answers as one server.

Peers are asked at the same time, each within the caller's deadline; a pod that does not
answer is named (an unload) or left out (a read), never waited on past the deadline.
"""

from __future__ import annotations

import asyncio
import time

from mesh.cache import ModelCache
from mesh.edge.hop import Hop, Peers, Route
from mesh.management import ModelManager
from mesh.records import ANY_STATE, Mine
from mesh.registry import ModelStore
from mesh_common.errors import MeshError, Unavailable, quoted


class FleetCalls:
    """Fan-out calls to the live pods of the registry mirror; keeps no state of its own."""

    def __init__(
        self, *, pod_id: str, store: ModelStore, manager: ModelManager, cache: ModelCache, peers: Peers
    ) -> None:
        self.pod_id = pod_id
        self._store = store
        self._manager = manager
        self._cache = cache
        self._peers = peers

    async def unload(self, name: str, *, vmodel: bool | None, deadline: float) -> None:
        """Unload the model a name resolves to on every pod that holds it (this one included).

        Peers are asked at once; ``Unavailable`` names the pods that could not be reached
        (their copies stay until they answer or their lease expires; retrying is safe).
        """
        model_id = (await self._manager.lookup_fresh(name, vmodel=vmodel)).model_id
        record = self._manager.record_any(model_id)
        live = self._store.instances()
        holders = sorted(record.counted_copies(live, states=ANY_STATE, here=self.pod_id, mine=Mine.NEVER))
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
        hop = Hop(key, Route.LOCAL)

        async def ask(endpoint: str) -> bytes:
            return await self._peers.forward(endpoint, method, payload, hop=hop, timeout_s=timeout_s)

        results = await asyncio.gather(*(ask(e) for e in peers.values()), return_exceptions=True)
        answers: list[tuple[str, bytes | MeshError]] = []
        for pod_id, result in zip(peers, results, strict=True):
            if isinstance(result, (bytes, MeshError)):
                answers.append((pod_id, result))
            else:
                raise result
        return answers
