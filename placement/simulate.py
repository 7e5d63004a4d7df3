"""Replay a request trace against the real placement code on simulated pods.

    python -m placement.simulate [--pods 4] [--capacity 2GiB] [--models 3000]
        [--requests 100000] [--seed 7] [--policy all|lru|gdsf|belady]
        [--trace FILE] [--write-trace FILE]

The trace is generated (or read from JSON lines ``{"time": s, "model": id, "tenant": t,
"size": bytes, "load_ms": ms}``): Zipf popularity over ``--models`` models with mixed
sizes and load times, popularity that shifts between phases, and one tenant scanning
through hundreds of cold models once. Every request is a hit when some pod holds the
model; a miss loads it on the pod ``placement.loading.choose_load_pod`` picks, which
evicts what ``placement.eviction.choose_victims`` chooses under the policy. ``belady``
is the offline reference: it evicts the model whose next request is farthest away.

Prints per policy: hit ratio, loads, bytes loaded, evictions and total load time, the
fraction of the LRU -> Belady hit-ratio gap GDSF closes, and how long one placement
decision (pod choice + victims) takes at 100 pods x 100,000 models.
"""

from __future__ import annotations

import argparse
import bisect
import json
import sys
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path

import numpy as np

from mesh_common.units import parse_size
from placement.cluster import ClusterView, ModelView, PodView
from placement.eviction import (
    EvictionCandidate,
    EvictionPolicy,
    choose_victims,
    gdsf_priority,
)
from placement.loading import choose_load_pod

MIB = 2**20
LABELS = frozenset({"type:sim"})
BELADY = "belady"


@dataclass(frozen=True)
class Request:
    time: float
    """Seconds from the start of the trace."""
    model: str
    tenant: str
    size: int
    load_ms: float


# traces


def generate_trace(
    *,
    models: int,
    requests: int,
    seed: int,
    tenants: int = 20,
    zipf_s: float = 0.9,
    phases: int = 4,
    shift: float = 0.3,
    rate: float = 50.0,
    scan_models: int = 600,
) -> list[Request]:
    """A synthetic trace: Zipf popularity that shifts each phase, plus one tenant's scan.

    Sizes are a mix (70% ~4 MiB, 25% ~40 MiB, 5% ~300 MiB, lognormal around those);
    load time is a per-model base (30-200 ms) plus 5-40 ms per MiB, so the cost of a
    miss per byte varies about 8-fold between models of one size.
    """
    rng = np.random.default_rng(seed)
    kind = rng.choice(3, size=models, p=[0.70, 0.25, 0.05])
    median_mib = np.array([4.0, 40.0, 300.0])[kind]
    sizes = (median_mib * rng.lognormal(0.0, 0.5, size=models) * MIB).astype(np.int64)
    load_ms = rng.uniform(30, 200, size=models) + sizes / MIB * rng.uniform(5, 40, size=models)
    owner = rng.integers(1, tenants, size=models)  # tenant-0 is the scanner
    names = [f"m{i:06d}" for i in range(models)]

    weights = 1.0 / np.arange(1, models + 1) ** zipf_s
    weights /= weights.sum()
    by_rank = rng.permutation(models)
    per_phase = requests // phases
    picks: list[np.ndarray] = []
    for _ in range(phases):
        picks.append(by_rank[rng.choice(models, size=per_phase, p=weights)])
        moved = rng.choice(models, size=int(models * shift), replace=False)  # popularity shifts
        by_rank[moved] = by_rank[rng.permutation(moved)]
    chosen = np.concatenate(picks)

    # The scan: tenant-0 reads through cold models once each, interleaved with normal traffic.
    cold = by_rank[-scan_models:]
    start = len(chosen) // 2
    trace_models = list(chosen[:start])
    tenant_of = owner.copy()
    tenant_of[cold] = 0
    for offset, model in enumerate(cold):
        trace_models.append(model)
        trace_models.append(chosen[start + offset])
    trace_models.extend(chosen[start + len(cold) :])
    times = np.cumsum(rng.exponential(1.0 / rate, size=len(trace_models)))
    return [
        Request(float(t), names[m], f"tenant-{tenant_of[m]}", int(sizes[m]), round(float(load_ms[m]), 1))
        for t, m in zip(times, trace_models, strict=True)
    ]


def read_trace(path: Path) -> list[Request]:
    requests = []
    with path.open() as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                requests.append(
                    Request(
                        float(data["time"]),
                        str(data["model"]),
                        str(data.get("tenant", "default")),
                        int(data["size"]),
                        float(data["load_ms"]),
                    )
                )
            except (ValueError, KeyError, TypeError) as exc:
                raise SystemExit(f"{path}:{number}: not a trace line ({exc}): {line.strip()[:120]}") from None
    return sorted(requests, key=lambda r: r.time)


def write_trace(path: Path, requests: Iterable[Request]) -> None:
    with path.open("w") as out:
        for r in requests:
            line = {"time": round(r.time, 4), "model": r.model, "tenant": r.tenant}
            out.write(json.dumps({**line, "size": r.size, "load_ms": r.load_ms}) + "\n")


# the simulated fleet


@dataclass
class _Loaded:
    size: int
    last_used: float
    load_ms: float
    hits: int = 1
    priority: float = 0.0


@dataclass
class _Pod:
    pod_id: str
    capacity: int
    used: int = 0
    models: OrderedDict[str, _Loaded] = field(default_factory=OrderedDict)
    """Least recently used first."""
    inflation: float = 0.0

    def view(self, gdsf: bool) -> PodView:
        """The pod as placement sees it: ``oldest_used_ms`` is the last use of the model its
        eviction policy would evict next (as the pod publishes it)."""
        if not self.models:
            oldest = 0.0
        elif gdsf:
            oldest = min(self.models.values(), key=attrgetter("priority")).last_used
        else:
            oldest = next(iter(self.models.values())).last_used
        return PodView(
            self.pod_id,
            self.capacity,
            self.used,
            oldest_used_ms=int(oldest * 1000) if self.models else 0,
            labels=LABELS,
        )


@dataclass
class Result:
    policy: str
    requests: int = 0
    hits: int = 0
    loads: int = 0
    bytes_loaded: int = 0
    evictions: int = 0
    load_ms: float = 0.0
    refused: int = 0
    """Requests for a model larger than any pod."""

    @property
    def hit_ratio(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    def line(self) -> str:
        return (
            f"{self.policy:<8} {self.hit_ratio:9.4f} {self.loads:8d} {self.bytes_loaded / 2**30:10.1f} "
            f"{self.evictions:10d} {self.load_ms / 60000:12.1f}"
        )


HEADER = (
    f"{'policy':<8} {'hit ratio':>9} {'loads':>8} {'GiB loaded':>10} {'evictions':>10} {'load (min)':>12}"
)


class _NextUse:
    """For Belady: when each model is requested next, after a given request index."""

    def __init__(self, trace: Sequence[Request]) -> None:
        self._uses: dict[str, list[int]] = {}
        for index, request in enumerate(trace):
            self._uses.setdefault(request.model, []).append(index)

    def after(self, model: str, index: int) -> int:
        uses = self._uses[model]
        at = bisect.bisect_right(uses, index)
        return uses[at] if at < len(uses) else sys.maxsize


def replay(trace: Sequence[Request], *, pods: int, capacity: int, policy: str) -> Result:
    """Run ``trace`` on ``pods`` simulated pods of ``capacity`` bytes each under ``policy``."""
    fleet = [_Pod(f"pod-{i}", capacity) for i in range(pods)]
    where: dict[str, _Pod] = {}
    result = Result(policy)
    eviction = EvictionPolicy.GDSF if policy == EvictionPolicy.GDSF.value else EvictionPolicy.LRU
    next_use = _NextUse(trace) if policy == BELADY else None
    for index, request in enumerate(trace):
        result.requests += 1
        holder = where.get(request.model)
        if holder is not None:
            result.hits += 1
            entry = holder.models[request.model]
            entry.hits += 1
            entry.last_used = request.time
            entry.priority = gdsf_priority(
                holder.inflation, hits=entry.hits, load_ms=entry.load_ms, size_bytes=entry.size
            )
            holder.models.move_to_end(request.model)
            continue
        gdsf = eviction is EvictionPolicy.GDSF and next_use is None
        cluster = ClusterView(tuple(p.view(gdsf) for p in fleet), int(request.time * 1000))
        decision = choose_load_pod(cluster, ModelView(request.model, "sim", request.size))
        if decision.pod_id is None:
            result.refused += 1
            continue
        pod = next(p for p in fleet if p.pod_id == decision.pod_id)
        need = pod.used + request.size - pod.capacity
        if next_use is not None:
            victims = _belady_victims(pod, need, next_use, index)
        else:
            candidates = [
                EvictionCandidate(m, e.size, e.last_used, priority=e.priority) for m, e in pod.models.items()
            ]
            victims = choose_victims(candidates, need, eviction) or []
        for victim in victims:
            gone = pod.models.pop(victim)
            pod.used -= gone.size
            pod.inflation = max(pod.inflation, gone.priority)
            del where[victim]
            result.evictions += 1
        entry = _Loaded(request.size, request.time, request.load_ms)
        entry.priority = gdsf_priority(
            pod.inflation, hits=1, load_ms=request.load_ms, size_bytes=request.size
        )
        pod.models[request.model] = entry
        pod.used += request.size
        where[request.model] = pod
        result.loads += 1
        result.bytes_loaded += request.size
        result.load_ms += request.load_ms
    return result


def _belady_victims(pod: _Pod, need: int, next_use: _NextUse, index: int) -> list[str]:
    if need <= 0:
        return []
    farthest = sorted(pod.models, key=lambda m: next_use.after(m, index), reverse=True)
    victims, freed = [], 0
    for model in farthest:
        victims.append(model)
        freed += pod.models[model].size
        if freed >= need:
            break
    return victims


# decision time at scale


def decision_time(
    *, pods: int = 100, models: int = 100_000, rounds: int = 2000, seed: int = 1
) -> tuple[float, float]:
    """Mean seconds to choose a pod for a load, and to choose its victims, on a full fleet.

    The fleet has ``pods`` pods holding ``models`` models between them; the chosen pod
    must free 1 GiB among its share of them.
    """
    rng = np.random.default_rng(seed)
    per_pod = models // pods
    capacity = 64 * 2**30
    views = tuple(
        PodView(
            f"pod-{i:03d}",
            capacity,
            capacity - int(rng.integers(0, 2**30)),
            oldest_used_ms=int(rng.integers(1, 10**6)),
            loads_in_flight=int(rng.integers(0, 3)),
            requests_in_flight=int(rng.integers(0, 50)),
            request_rate=float(rng.uniform(0, 500)),
            labels=LABELS,
        )
        for i in range(pods)
    )
    cluster = ClusterView(views, 10**6)
    sizes = rng.integers(MIB, 256 * MIB, size=per_pod)
    used = rng.uniform(0, 1000, size=per_pod)
    priorities = rng.uniform(0, 100, size=per_pod)
    candidates = [
        EvictionCandidate(f"m{j}", int(sizes[j]), float(used[j]), priority=float(priorities[j]))
        for j in range(per_pod)
    ]
    started = time.perf_counter()
    for r in range(rounds):
        if choose_load_pod(cluster, ModelView(f"new-{r}", "sim", 512 * MIB)).pod_id is None:
            raise AssertionError("the benchmark fleet refused a load")
    choose_s = (time.perf_counter() - started) / rounds
    started = time.perf_counter()
    for _ in range(rounds):
        choose_victims(candidates, 2**30, EvictionPolicy.GDSF)
    return choose_s, (time.perf_counter() - started) / rounds


# the command


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m placement.simulate", description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=4)
    parser.add_argument("--capacity", default="2GiB", help="per pod, like 512MiB or 2GiB")
    parser.add_argument("--models", type=int, default=3000)
    parser.add_argument("--requests", type=int, default=100_000, help="trace length")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--policy", choices=["all", "lru", "gdsf", BELADY], default="all")
    parser.add_argument("--trace", type=Path, help="read this JSON-lines trace instead of generating one")
    parser.add_argument("--write-trace", type=Path, help="write the generated trace here")
    args = parser.parse_args(argv)

    capacity = parse_size(args.capacity)
    if args.trace:
        trace = read_trace(args.trace)
    else:
        trace = generate_trace(models=args.models, requests=args.requests, seed=args.seed)
        if args.write_trace:
            write_trace(args.write_trace, trace)
    distinct = {r.model: r.size for r in trace}
    total_gib = sum(distinct.values()) / 2**30
    print(
        f"trace: {len(trace)} requests over {len(distinct)} models ({total_gib:.1f} GiB), "
        f"{len({r.tenant for r in trace})} tenants; fleet: {args.pods} pods x {capacity / 2**30:.2f} GiB"
    )
    policies = ["lru", "gdsf", BELADY] if args.policy == "all" else [args.policy]
    print(HEADER)
    results = {}
    for policy in policies:
        started = time.perf_counter()
        results[policy] = replay(trace, pods=args.pods, capacity=capacity, policy=policy)
        print(f"{results[policy].line()}   ({time.perf_counter() - started:.1f} s)", flush=True)
    if {"lru", "gdsf", BELADY} <= results.keys():
        lru, ours, best = (results[p].hit_ratio for p in ("lru", "gdsf", BELADY))
        gap = best - lru
        closed = (ours - lru) / gap if gap > 0 else float("nan")
        print(
            f"gdsf closes {closed:.0%} of the LRU -> Belady hit-ratio gap "
            f"({lru:.4f} -> {ours:.4f} of {best:.4f})"
        )
        print(
            f"gdsf / lru: loads {results['gdsf'].loads / max(results['lru'].loads, 1):.2f}x, "
            f"load time {results['gdsf'].load_ms / max(results['lru'].load_ms, 1):.2f}x"
        )
    choose_s, victims_s = decision_time()
    print(
        f"one placement decision at 100 pods x 100,000 models: {(choose_s + victims_s) * 1e6:.0f} us "
        f"(pod choice {choose_s * 1e6:.0f} us, victims among the pod's 1,000 models {victims_s * 1e6:.0f} us)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
