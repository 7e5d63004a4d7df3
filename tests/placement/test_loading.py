"""Where a model loads and which copy serves: hand-built snapshots, ties, full fleets, one pod."""

from __future__ import annotations

from collections import Counter

from placement.cluster import ClusterView, ModelView, PodView
from placement.loading import COLD_HORIZON_MS, choose_copy, choose_load_pod

LABELS = frozenset({"type:sklearn", "type:onnx"})
NOW = 10 * COLD_HORIZON_MS


def pod(pod_id: str, **fields: object) -> PodView:
    values: dict[str, object] = {"capacity_bytes": 1000, "labels": LABELS}
    values.update(fields)
    return PodView(pod_id, **values)  # type: ignore[arg-type]


def model(model_id: str = "m", size: int = 100, **fields: object) -> ModelView:
    return ModelView(model_id, "sklearn", size, **fields)  # type: ignore[arg-type]


def test_prefers_free_room_over_eviction() -> None:
    cluster = ClusterView((pod("full", used_bytes=950, oldest_used_ms=1), pod("roomy", used_bytes=500)), NOW)
    decision = choose_load_pod(cluster, model())
    assert decision.pod_id == "roomy"
    assert decision.runner_up is not None and decision.runner_up.pod_id == "full"
    assert decision.ranked[0].fits and not decision.ranked[1].fits


def test_full_fleet_evicts_where_the_coldest_models_are() -> None:
    cluster = ClusterView(
        (
            pod("hot", used_bytes=1000, oldest_used_ms=NOW - 1000),
            pod("cold", used_bytes=1000, oldest_used_ms=NOW - COLD_HORIZON_MS),
        ),
        NOW,
    )
    assert choose_load_pod(cluster, model()).pod_id == "cold"


def test_skips_pods_that_cannot_or_must_not_load() -> None:
    cluster = ClusterView(
        (
            pod("leaving", shutting_down=True),
            pod("no-runtime", labels=frozenset({"type:onnx"})),
            pod("failed"),
            pod("holder"),
            pod("tried"),
            pod("small", capacity_bytes=50),
            pod("ok", used_bytes=990),
        ),
        NOW,
        excluded=frozenset({"tried"}),
    )
    decision = choose_load_pod(cluster, model(holders=frozenset({"holder"}), failed_on=frozenset({"failed"})))
    assert decision.pod_id == "ok"
    assert [s.pod_id for s in decision.ranked] == ["ok"]


def test_no_pod_says_why_for_each() -> None:
    cluster = ClusterView((pod("a", shutting_down=True), pod("b", capacity_bytes=10)), NOW)
    decision = choose_load_pod(cluster, model())
    assert decision.pod_id is None
    assert "a: shutting down" in decision.reason and "b: capacity 10 < 100 bytes" in decision.reason
    assert choose_load_pod(ClusterView((), NOW), model()).reason == "no pod is running"


def test_one_pod() -> None:
    assert choose_load_pod(ClusterView((pod("only", used_bytes=1000),), NOW), model()).pod_id == "only"


def test_loads_in_flight_push_new_loads_elsewhere() -> None:
    cluster = ClusterView((pod("busy", loads_in_flight=2), pod("idle")), NOW)
    assert choose_load_pod(cluster, model()).pod_id == "idle"


def test_a_burst_of_new_models_spreads_over_equal_pods() -> None:
    cluster = ClusterView(tuple(pod(f"p{i}") for i in range(3)), NOW)
    chosen = Counter(choose_load_pod(cluster, model(f"m{i}")).pod_id for i in range(300))
    assert set(chosen) == {"p0", "p1", "p2"}
    assert min(chosen.values()) > 60
    # Deterministic for one model: every entry pod sends it to the same place.
    assert len({choose_load_pod(cluster, model("same")).pod_id for _ in range(10)}) == 1


def test_copy_with_fewest_requests_in_flight_serves() -> None:
    assert choose_copy(["a", "b"], {"a": 3, "b": 1}, salt="x") == "b"
    assert choose_copy([], {}, salt="x") is None
    picked = Counter(choose_copy(["a", "b"], {}, salt=str(i)) for i in range(200))
    assert set(picked) == {"a", "b"}
