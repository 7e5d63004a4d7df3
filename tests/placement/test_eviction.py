from placement.eviction import EvictionCandidate, EvictionPolicy, choose_victims, gdsf_priority

GDSF = EvictionPolicy.GDSF
MIB = 2**20


def c(model_id: str, size: int, last_used: float, in_use: int = 0) -> EvictionCandidate:
    return EvictionCandidate(model_id, size, last_used, in_use)


def test_least_recently_used_idle_models_go_first() -> None:
    candidates = [c("new", 10, 3.0), c("old", 10, 1.0), c("mid", 10, 2.0)]
    assert choose_victims(candidates, 15) == ["old", "mid"]


def test_models_in_use_are_never_chosen() -> None:
    candidates = [c("busy", 100, 0.0, in_use=1), c("idle", 10, 5.0)]
    assert choose_victims(candidates, 5) == ["idle"]
    assert choose_victims(candidates, 50) is None


def test_nothing_needed_and_ties() -> None:
    assert choose_victims([c("a", 1, 1.0)], 0) == []
    assert choose_victims([c("b", 5, 1.0), c("a", 5, 1.0)], 5) == ["b"]  # ties: the caller's order
    assert choose_victims([], 1) is None


def g(
    model_id: str, size_mib: float, *, hits: int, load_ms: float, last_used: float = 0.0, **kw: int
) -> EvictionCandidate:
    size = int(size_mib * MIB)
    priority = gdsf_priority(0.0, hits=hits, load_ms=load_ms, size_bytes=size)
    return EvictionCandidate(model_id, size, last_used, priority=priority, **kw)


def test_gdsf_keeps_what_is_costly_to_reload_per_byte() -> None:
    cheap = g("cheap-big", 100, hits=3, load_ms=200)  # 2 ms per MiB
    costly = g("costly-small", 10, hits=3, load_ms=2000)  # 200 ms per MiB
    assert choose_victims([costly, cheap], 10 * MIB, GDSF) == ["cheap-big"]
    # LRU ignores both: the older one goes.
    old, new = (
        g("old", 10, hits=3, load_ms=2000, last_used=1.0),
        g("new", 100, hits=3, load_ms=200, last_used=2.0),
    )
    assert choose_victims([new, old], 10 * MIB) == ["old"]
    assert choose_victims([new, old], 10 * MIB, GDSF) == ["new"]


def test_gdsf_evicts_a_scan_before_the_hot_models_it_would_push_out() -> None:
    hot = [g(f"hot{i}", 10, hits=50, load_ms=500, last_used=float(i)) for i in range(3)]
    scanned = [g(f"scan{i}", 10, hits=1, load_ms=500, last_used=10.0 + i) for i in range(3)]
    assert choose_victims([*hot, *scanned], 25 * MIB, GDSF) == ["scan0", "scan1", "scan2"]
    assert choose_victims([*hot, *scanned], 25 * MIB) == ["hot0", "hot1", "hot2"]


def test_gdsf_inflation_lets_models_that_stop_being_used_age_out() -> None:
    # Hit often long ago (priority set when the pod's inflation was 0) vs used once since
    # evictions raised the inflation to 100: the stale one goes.
    stale = EvictionCandidate(
        "stale", MIB, 1.0, priority=gdsf_priority(0.0, hits=5, load_ms=10, size_bytes=MIB)
    )
    fresh = EvictionCandidate(
        "fresh", MIB, 9.0, priority=gdsf_priority(100.0, hits=1, load_ms=10, size_bytes=MIB)
    )
    assert choose_victims([fresh, stale], MIB, GDSF) == ["stale"]


def test_gdsf_never_picks_a_busy_model_and_says_when_nothing_fits() -> None:
    busy = g("busy", 50, hits=1, load_ms=1, in_use=2)
    idle = g("idle", 10, hits=100, load_ms=10_000)
    assert choose_victims([busy, idle], 5 * MIB, GDSF) == ["idle"]
    assert choose_victims([busy, idle], 20 * MIB, GDSF) is None


def test_gdsf_priority_treats_unknown_costs_and_tiny_models_sanely() -> None:
    assert gdsf_priority(0.0, hits=1, load_ms=0.0, size_bytes=MIB) == 1.0  # load time floors at 1 ms
    assert gdsf_priority(0.0, hits=1, load_ms=1.0, size_bytes=0) == 1024.0  # size floors at 1 KiB
    assert gdsf_priority(7.0, hits=2, load_ms=30.0, size_bytes=3 * MIB) == 27.0


def test_copies_held_elsewhere_go_first_under_either_policy() -> None:
    only = EvictionCandidate("only-copy", MIB, 1.0, priority=1.0)
    extra = EvictionCandidate("extra-copy", MIB, 9.0, priority=500.0, replicated=True)
    busy_extra = EvictionCandidate("busy-extra", MIB, 0.5, in_use=1, priority=0.1, replicated=True)
    for policy in (EvictionPolicy.LRU, GDSF):
        assert choose_victims([only, busy_extra, extra], MIB, policy) == ["extra-copy"]
        assert choose_victims([only, busy_extra, extra], 2 * MIB, policy) == ["extra-copy", "only-copy"]
