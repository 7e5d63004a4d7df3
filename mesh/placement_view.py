"""What placement sees from this pod: the snapshots (``ClusterView``, ``ModelView``) that the
pure ``placement`` functions decide on, built from the registry mirror, and the decision
explained in one line.

The mirror lags: another pod's instance record can be a publish interval old. The view adds
the copies the model records show it took since, and the loads this pod sent it that it may
not have recorded yet (for ``PENDING_S``), so a burst of loads does not herd onto one pod.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping

from mesh.records import InstanceRecord, Mine, ModelRecord
from mesh.registry import ModelStore
from mesh_common.clock import now_ms
from placement.cluster import ClusterView, ModelView, PodView
from placement.loading import LoadDecision, choose_load_pod

PENDING_S = 2.0
"""How long a load this pod sent elsewhere counts against that pod (until its record shows it)."""


class PlacementView:
    """Owns the loads this pod sent to others lately (one short list per pod, pruned as read);
    reads everything else from the mirror. ``in_flight`` is the router's count of calls in
    flight by serving pod."""

    def __init__(
        self,
        *,
        pod_id: str,
        store: ModelStore,
        describe_self: Callable[[], InstanceRecord],
        in_flight: Mapping[str, int],
        failure_ttl_s: float,
    ) -> None:
        self.pod_id = pod_id
        self._store = store
        self._describe_self = describe_self
        self._in_flight = in_flight
        self._failure_ttl_ms = int(failure_ttl_s * 1000)
        self._sent_loads: dict[str, list[float]] = {}

    def load_sent(self, pod_id: str) -> None:
        """This pod just sent a load to ``pod_id``."""
        self._sent_loads.setdefault(pod_id, []).append(time.monotonic())

    def view(self, excluded: Collection[str] = frozenset()) -> ClusterView:
        """The live pods as placement sees them (this pod as it describes itself)."""
        instances = self._store.instances()
        instances[self.pod_id] = self._describe_self()
        now = time.monotonic()
        self._sent_loads = {pod: self._sent_loads[pod] for pod in self._sent_loads if pod in instances}
        pods = [self._pod(pod_id, instance, now) for pod_id, instance in sorted(instances.items())]
        return ClusterView(tuple(pods), now_ms(), frozenset(excluded))

    def _pod(self, pod_id: str, instance: InstanceRecord, now: float) -> PodView:
        used, loads = instance.used_bytes, instance.loads_in_flight
        if pod_id != self.pod_id:
            # Another pod's record can be a publish interval old: add the copies it recorded
            # since, and the loads sent from here that it may not have recorded yet.
            sent = [t for t in self._sent_loads.get(pod_id, []) if now - t < PENDING_S]
            if sent:
                self._sent_loads[pod_id] = sent
            else:
                self._sent_loads.pop(pod_id, None)
            fresh = self._store.unpublished(pod_id)
            used = min(used + fresh.bytes, instance.capacity_bytes)
            loads += max(len(sent), fresh.loads)
        return PodView(
            pod_id=pod_id,
            capacity_bytes=instance.capacity_bytes,
            used_bytes=used,
            oldest_used_ms=instance.oldest_used_ms,
            loads_in_flight=loads,
            requests_in_flight=max(instance.requests_in_flight, self._in_flight.get(pod_id, 0)),
            request_rate=instance.request_rate,
            labels=frozenset(instance.labels),
            shutting_down=instance.shutting_down,
        )

    def choose(self, record: ModelRecord, excluded: Collection[str], failed: Collection[str]) -> LoadDecision:
        """Where ``record``'s model should load: placement's decision over the live pods but
        ``excluded``, skipping the pods that failed it lately and ``failed``."""
        return choose_load_pod(self.view(excluded), self._model_view(record, failed))

    def _model_view(self, record: ModelRecord, failed: Collection[str]) -> ModelView:
        # Every recorded pod, live or not.
        holders = frozenset(record.counted_copies(None, here=self.pod_id, mine=Mine.NEVER))
        failures = frozenset(self.recent_failures(record)) | frozenset(failed)
        return ModelView(record.model_id, record.info.type, record.size_bytes, holders, failures)

    def recent_failures(self, record: ModelRecord) -> dict[str, str]:
        """The model's failures that have not expired: pod -> reason."""
        recent = record.recent_failures(now_ms=now_ms(), failure_ttl_ms=self._failure_ttl_ms)
        return {pod: failure.reason for pod, failure in recent.items()}


def explain(decision: LoadDecision, decided_by: str) -> str:
    """One line for a copy record: the winner's score and the runner-up's."""
    best = decision.ranked[0]
    fits = " (fits)" if best.fits else " (evicts)"
    text = f"placed on {best.pod_id} by {decided_by}: score {best.score:.2f}{fits}"
    runner = decision.runner_up
    if runner is None:
        return text + ", the only eligible pod"
    return text + f" vs runner-up {runner.pod_id} {runner.score:.2f}"
