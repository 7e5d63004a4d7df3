"""Which registered models to load ahead of demand, and where: only into idle space.

A candidate is a registered model with no copy and no recent load failure. Most
recently used first (then most recently registered), each goes to the pod
``placement.loading.choose_load_pod`` ranks first, but only when it fits in that
pod's free room without evicting anything and the pod has no load in flight: a
pre-load never pushes out a loaded model and never competes with a load a caller
is waiting for. At most ``limit`` per round; each one planned counts against the
pod's room and loads for the next.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from placement.cluster import ClusterView, ModelView
from placement.loading import choose_load_pod


@dataclass(frozen=True)
class PreloadCandidate:
    model_id: str
    model_type: str
    size_bytes: int
    """Expected loaded size (0: unknown; such models are skipped, their size cannot be trusted)."""
    last_used_ms: int = 0
    registered_ms: int = 0


def choose_preloads(
    cluster: ClusterView, candidates: Sequence[PreloadCandidate], *, limit: int
) -> list[tuple[str, str]]:
    """``(model_id, pod_id)`` pairs to load now, best first."""
    plan: list[tuple[str, str]] = []
    pods = {pod.pod_id: pod for pod in cluster.pods if not pod.loads_in_flight}
    ordered = sorted(candidates, key=lambda c: (c.last_used_ms, c.registered_ms, c.model_id), reverse=True)
    for candidate in ordered:
        if len(plan) >= limit or not pods:
            break
        if candidate.size_bytes <= 0:
            continue
        view = ClusterView(tuple(pods.values()), cluster.now_ms, cluster.excluded)
        model = ModelView(candidate.model_id, candidate.model_type, candidate.size_bytes)
        decision = choose_load_pod(view, model)
        if decision.pod_id is None or not decision.ranked[0].fits:
            continue
        pod = pods[decision.pod_id]
        pods[pod.pod_id] = replace(
            pod, used_bytes=pod.used_bytes + candidate.size_bytes, loads_in_flight=pod.loads_in_flight + 1
        )
        plan.append((candidate.model_id, pod.pod_id))
    return plan
