"""Pre-loads go only into free room, most recently used first, spread by placement."""

from __future__ import annotations

from placement.cluster import ClusterView, PodView
from placement.preload import PreloadCandidate, choose_preloads

LABELS = frozenset({"type:sklearn"})


def pod(pod_id: str, used: int = 0, **fields: object) -> PodView:
    return PodView(pod_id, 1000, used, labels=LABELS, **fields)  # type: ignore[arg-type]


def model(model_id: str, size: int = 100, last_used_ms: int = 1, **fields: object) -> PreloadCandidate:
    return PreloadCandidate(model_id, "sklearn", size, last_used_ms, **fields)  # type: ignore[arg-type]


def test_most_recent_first_into_free_room_only() -> None:
    cluster = ClusterView((pod("a", used=700),), 0)
    plan = choose_preloads(
        cluster, [model("old", 100, 1), model("new", 100, 3), model("mid", 100, 2)], limit=5
    )
    assert plan == [("new", "a"), ("mid", "a"), ("old", "a")]
    # 300 bytes free: the fourth would need an eviction, so it waits.
    assert len(choose_preloads(cluster, [model(f"m{i}", 100, i) for i in range(1, 5)], limit=5)) == 3


def test_limit_unknown_sizes_and_full_or_busy_or_leaving_pods() -> None:
    roomy = ClusterView((pod("a"), pod("b")), 0)
    assert len(choose_preloads(roomy, [model(f"m{i}") for i in range(5)], limit=2)) == 2
    assert choose_preloads(roomy, [model("unknown", size=0)], limit=2) == []
    full = ClusterView((pod("a", used=1000),), 0)
    assert choose_preloads(full, [model("m")], limit=2) == []
    busy = ClusterView((pod("a", loads_in_flight=1), pod("leaving", shutting_down=True)), 0)
    assert choose_preloads(busy, [model("m")], limit=2) == []


def test_preloads_spread_over_equal_pods() -> None:
    cluster = ClusterView((pod("a"), pod("b"), pod("c")), 0)
    plan = choose_preloads(cluster, [model(f"m{i}", 50, i) for i in range(1, 7)], limit=6)
    assert len(plan) == 6
    assert {p for _, p in plan} == {"a", "b", "c"}
