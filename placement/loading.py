"""Where to load a model that no pod holds, and which copy serves a call.

``choose_load_pod`` ranks the pods that may load the model and returns the best with
the runner-up, so the decision can be explained.

A pod may load the model when it is not shutting down, supports the model's type,
is not excluded, has not failed to load it recently, does not hold it already, and its
whole capacity can take the model. Its score (higher is better) adds:

- ``FIT``: it has free room for the model now (no eviction needed);
- ``headroom``: free bytes left after the load, as a fraction of its capacity (-1..1);
- ``coldness``: when it must evict, how cold its coldest model is (0..1 over
  ``COLD_HORIZON_MS``), so a pod holding stale models is preferred to one whose
  models are all hot;

and subtracts, so a burst of new models spreads over the fleet instead of herding
onto the emptiest pod (ModelMesh's known failure):

- ``LOAD_WEIGHT`` per load in flight there (including loads this pod just sent
  there that the pod's record does not show yet);
- ``REQUEST_WEIGHT`` per request in flight and ``RATE_WEIGHT`` per request/s of its
  recent rate.

Ties, and near-ties within ``SPREAD``, are broken by rendezvous hashing of
(model, pod): deterministic for one model, spread evenly across models, needing no
shared state.

``choose_copy`` picks the holder with the fewest requests in flight; ties go to the
rendezvous hash of (call, pod) so equal copies share the load.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from placement.cluster import ClusterView, ModelView, PodView

FIT = 2.0
LOAD_WEIGHT = 0.5
REQUEST_WEIGHT = 0.02
RATE_WEIGHT = 0.001
COLD_HORIZON_MS = 10 * 60 * 1000
SPREAD = 0.05
"""Scores within this of each other are treated as equal and spread by hashing."""


class PodScore(NamedTuple):
    pod_id: str
    score: float
    fits: bool
    """Whether the model fits in the pod's free room without evicting."""


@dataclass(frozen=True)
class LoadDecision:
    pod_id: str | None
    """The pod to load on; None when no pod may (``reason`` says why)."""
    ranked: tuple[PodScore, ...]
    """Every eligible pod, best first."""
    reason: str = ""

    @property
    def runner_up(self) -> PodScore | None:
        return self.ranked[1] if len(self.ranked) > 1 else None


def choose_load_pod(cluster: ClusterView, model: ModelView) -> LoadDecision:
    label = f"type:{model.model_type}"
    eligible = [pod for pod in cluster.pods if _eligible(pod, model, cluster, label)]
    if not eligible:
        return LoadDecision(None, (), _why_none(cluster, model))
    scores = [_score(pod, model, cluster.now_ms) for pod in eligible]
    best = max(s.score for s in scores)
    top = [s for s in scores if s.score >= best - SPREAD]
    rest = [s for s in scores if s.score < best - SPREAD]
    ranked = sorted(top, key=lambda s: _rendezvous(model.model_id, s.pod_id), reverse=True)
    ranked += sorted(rest, key=lambda s: s.score, reverse=True)
    return LoadDecision(ranked[0].pod_id, tuple(ranked))


def choose_copy(holders: Sequence[str], in_flight: Mapping[str, int], *, salt: str) -> str | None:
    """The holder with the fewest requests in flight (ties: rendezvous hash of ``salt``)."""
    if not holders:
        return None
    return min(holders, key=lambda pod: (in_flight.get(pod, 0), -_rendezvous(salt, pod)))


def _eligible(pod: PodView, model: ModelView, cluster: ClusterView, label: str) -> bool:
    return (
        not pod.shutting_down
        and label in pod.labels
        and pod.pod_id not in cluster.excluded
        and pod.pod_id not in model.failed_on
        and pod.pod_id not in model.holders
        and pod.capacity_bytes >= model.size_bytes
    )


def _score(pod: PodView, model: ModelView, now_ms: int) -> PodScore:
    # Runs for every pod on every load decision: plain arithmetic, no helper calls.
    capacity = pod.capacity_bytes or 1
    free = pod.capacity_bytes - pod.used_bytes
    free = free if free > 0 else 0
    fits = free >= model.size_bytes
    headroom = (free - model.size_bytes) / capacity
    headroom = 1.0 if headroom > 1.0 else -1.0 if headroom < -1.0 else headroom
    if fits:
        coldness = 1.0
    elif pod.oldest_used_ms:
        age = (now_ms - pod.oldest_used_ms) / COLD_HORIZON_MS
        coldness = 1.0 if age > 1.0 else 0.0 if age < 0.0 else age
    else:
        coldness = 0.0
    busy = (
        LOAD_WEIGHT * pod.loads_in_flight
        + REQUEST_WEIGHT * pod.requests_in_flight
        + RATE_WEIGHT * pod.request_rate
    )
    return PodScore(pod.pod_id, (FIT if fits else 0.0) + headroom + coldness - busy, fits)


def _why_none(cluster: ClusterView, model: ModelView) -> str:
    if not cluster.pods:
        return "no pod is running"
    reasons = []
    for pod in cluster.pods:
        if pod.shutting_down:
            reasons.append(f"{pod.pod_id}: shutting down")
        elif not pod.supports(model.model_type):
            reasons.append(f"{pod.pod_id}: no {model.model_type!r} runtime")
        elif pod.pod_id in cluster.excluded:
            reasons.append(f"{pod.pod_id}: already tried")
        elif pod.pod_id in model.failed_on:
            reasons.append(f"{pod.pod_id}: load failed recently")
        elif pod.pod_id in model.holders:
            reasons.append(f"{pod.pod_id}: holds it")
        else:
            reasons.append(f"{pod.pod_id}: capacity {pod.capacity_bytes} < {model.size_bytes} bytes")
    return "; ".join(reasons)


def _rendezvous(key: str, pod_id: str) -> int:
    digest = hashlib.blake2b(f"{key}\0{pod_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")
