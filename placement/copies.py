"""How many copies each loaded model should have, and where a new copy goes.

Per model, from what its copies serve now (requests/s and queueing delay, as the
pods publish them), one change at most per round:

- more copies than ``max_copies`` (the model's, else the policy's default, never
  more than the pods that could hold one) -> drop one;
- fewer than ``min_copies`` -> add one;
- rate per copy above ``up_rate``, or queueing delay above ``up_queue_ms``, and
  below the maximum -> add one;
- above the minimum, and the remaining copies would each still serve less than
  ``down_rate`` with no queueing -> drop the copy serving least (the newest on a tie),
  but never one younger than ``cooldown_ms``.

``up_rate`` > ``down_rate`` is the hysteresis that keeps a model from flapping. A
model with no copy is not touched (its first call loads it), nor one with a copy
loading (the last change is not done yet); the last copy is never dropped. Copies
on pods shutting down or gone do not count.

A new copy goes where ``placement.loading.choose_load_pod`` ranks first among the
pods that do not hold the model; each planned copy counts against that pod's room
and loads for the rest of the round. The hottest models are planned first; at most
``limit`` changes per round.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from placement.cluster import ClusterView, ModelView
from placement.loading import choose_load_pod


@dataclass(frozen=True)
class CopyPolicy:
    up_rate: float = 50.0
    """Requests/s per copy above which a copy is added."""
    up_queue_ms: float = 20.0
    """Queueing delay (ms) per call above which a copy is added."""
    down_rate: float = 10.0
    """A copy is dropped when the others would each serve less than this (requests/s)."""
    cooldown_ms: int = 30_000
    """A copy younger than this is not dropped (it has not had time to take traffic)."""
    default_max: int = 4
    """Most copies for models that set no maximum."""


@dataclass(frozen=True)
class ModelDemand:
    model_id: str
    model_type: str
    size_bytes: int
    loaded: Mapping[str, int] = field(default_factory=dict)
    """Pod id -> when its copy finished loading (ms), for every loaded copy."""
    loading: frozenset[str] = frozenset()
    failed_on: frozenset[str] = frozenset()
    rates: Mapping[str, float] = field(default_factory=dict)
    """Pod id -> requests/s its copy serves."""
    queue_ms: float = 0.0
    """The worst queueing delay among its copies."""
    min_copies: int = 1
    max_copies: int = 0
    """0: the policy's default."""


@dataclass(frozen=True)
class CopyChange:
    model_id: str
    pod_id: str
    add: bool
    reason: str


def plan_copies(
    cluster: ClusterView, demands: Sequence[ModelDemand], policy: CopyPolicy, *, limit: int
) -> list[CopyChange]:
    """Copies to add and drop this round, hottest models first."""
    pods = {pod.pod_id: pod for pod in cluster.pods if not pod.shutting_down}
    plan: list[CopyChange] = []

    def heat(d: ModelDemand) -> float:
        return sum(d.rates.values())

    for demand in sorted(demands, key=heat, reverse=True):
        if len(plan) >= limit:
            break
        loaded = {pod: since for pod, since in demand.loaded.items() if pod in pods}
        if not loaded or demand.loading:
            continue
        count = len(loaded)
        total = sum(demand.rates.get(pod, 0.0) for pod in loaded)
        wanted_max = min(demand.max_copies or policy.default_max, len(pods))
        wanted_min = min(max(demand.min_copies, 1), wanted_max)
        per_copy = total / count
        if count > wanted_max:
            drop = _coldest(loaded, demand.rates)
            why = f"{count} copies, its maximum is {wanted_max}"
            plan.append(CopyChange(demand.model_id, drop, False, why))
            continue
        why = ""
        if count < wanted_min:
            why = f"{count} copies, its minimum is {wanted_min}"
        elif count < wanted_max and per_copy > policy.up_rate:
            why = f"{per_copy:.1f} req/s per copy on {count} > {policy.up_rate:g}"
        elif count < wanted_max and demand.queue_ms > policy.up_queue_ms:
            why = f"queueing {demand.queue_ms:.1f} ms > {policy.up_queue_ms:g} ms on {count} copies"
        if why:
            view = ClusterView(tuple(pods.values()), cluster.now_ms, cluster.excluded)
            model = ModelView(
                demand.model_id,
                demand.model_type,
                demand.size_bytes,
                holders=frozenset(demand.loaded) | demand.loading,
                failed_on=demand.failed_on,
            )
            decision = choose_load_pod(view, model)
            if decision.pod_id is None:
                continue
            best = decision.ranked[0]
            runner = decision.runner_up
            placed = f"score {best.score:.2f}" + (
                f" vs {runner.pod_id} {runner.score:.2f}" if runner is not None else ""
            )
            plan.append(CopyChange(demand.model_id, best.pod_id, True, f"{why} ({placed})"))
            pod = pods[best.pod_id]
            pods[best.pod_id] = replace(
                pod, used_bytes=pod.used_bytes + demand.size_bytes, loads_in_flight=pod.loads_in_flight + 1
            )
            continue
        if count <= wanted_min or demand.queue_ms > policy.up_queue_ms / 2:
            continue
        rest = total / (count - 1)
        if rest >= policy.down_rate:
            continue
        drop = _coldest(loaded, demand.rates)
        if cluster.now_ms - loaded[drop] < policy.cooldown_ms:
            continue
        plan.append(
            CopyChange(
                demand.model_id,
                drop,
                False,
                f"{total:.1f} req/s would be {rest:.1f} per copy on {count - 1} < {policy.down_rate:g}",
            )
        )
    return plan


def _coldest(loaded: Mapping[str, int], rates: Mapping[str, float]) -> str:
    """The copy serving least; on a tie the newest (then the highest pod id, for determinism)."""
    return max(loaded, key=lambda pod: (-rates.get(pod, 0.0), loaded[pod], pod))


def surplus_copy(demand: ModelDemand, pod_id: str, policy: CopyPolicy) -> str:
    """Why the fleet does not need ``pod_id``'s copy of the model ("": it does).

    For a copy the registry did not show while its pod was cut off from it (the pod's lease ran
    out, the janitor forgot the pod's copies), when the pod rejoins: meanwhile, seeing no copy,
    other pods may have loaded the model again. ``plan_copies``' tests for dropping a copy, less
    the cooldown: the cooldown gives a copy added for traffic time to take it, and neither this
    copy nor one loaded in its place was added for traffic. ``demand.loaded`` holds ``pod_id``'s
    copy and the copies it may yield to; ``demand.rates`` the calls each serves.
    """
    others = [pod for pod in demand.loaded if pod != pod_id]
    if not others or pod_id not in demand.loaded:
        return ""
    wanted_max = demand.max_copies or policy.default_max
    if len(others) >= wanted_max:
        return f"{len(others)} other copies, its maximum is {wanted_max}"
    if len(others) < max(demand.min_copies, 1) or demand.queue_ms > policy.up_queue_ms / 2:
        return ""
    total = sum(demand.rates.get(pod, 0.0) for pod in demand.loaded)
    rest = total / len(others)
    if rest >= policy.down_rate:
        return ""
    return (
        f"loaded on {', '.join(sorted(others))} while the registry had lost this copy; "
        f"{total:.1f} req/s would be {rest:.1f} per copy on {len(others)} < {policy.down_rate:g}"
    )
