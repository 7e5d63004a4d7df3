from placement.eviction import EvictionCandidate, choose_victims


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
    assert choose_victims([c("b", 5, 1.0), c("a", 5, 1.0)], 5) == ["a"]
    assert choose_victims([], 1) is None
