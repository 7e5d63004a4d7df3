"""A tenant over its cap pays with its own coldest copies; registration caps name the tenant."""

from __future__ import annotations

from placement.quotas import TenantCopy, registration_refusal, tenant_victims


def copy(model_id: str, pod_id: str = "a", size: int = 100, **fields: object) -> TenantCopy:
    return TenantCopy(model_id, pod_id, size, **fields)  # type: ignore[arg-type]


def victims(copies: list[TenantCopy], cap: int, need: int = 100, here: str = "a") -> list[str] | None:
    chosen = tenant_victims(copies, cap_bytes=cap, need_bytes=need, loading_pod=here)
    return None if chosen is None else [f"{c.model_id}@{c.pod_id}" for c in chosen]


def test_under_the_cap_nothing_goes() -> None:
    assert victims([], cap=100) == []
    assert victims([copy("m1"), copy("m2")], cap=300) == []


def test_over_the_cap_the_coldest_go_until_the_load_fits() -> None:
    copies = [
        copy("hot", rate=40.0, last_used_ms=5),
        copy("warm", rate=2.0, last_used_ms=9),
        copy("idle-old", last_used_ms=1),
        copy("idle-new", last_used_ms=8),
    ]
    assert victims(copies, cap=400) == ["idle-old@a"]
    assert victims(copies, cap=300) == ["idle-old@a", "idle-new@a"]
    assert victims(copies, cap=200) == ["idle-old@a", "idle-new@a", "warm@a"]


def test_equally_cold_copies_on_the_loading_pod_go_first() -> None:
    copies = [copy("far", "b", last_used_ms=1), copy("near", "a", last_used_ms=5)]
    assert victims(copies, cap=200, here="a") == ["near@a"]
    assert victims(copies, cap=200, here="b") == ["far@b"]
    # but a colder copy elsewhere goes before a busier one here
    assert victims([copy("far", "b"), copy("near", "a", rate=3.0)], cap=200) == ["far@b"]


def test_copies_serving_or_loading_are_never_picked_and_big_ones_free_more() -> None:
    copies = [copy("busy", busy=True), copy("big", size=300, last_used_ms=9), copy("small", last_used_ms=1)]
    assert victims(copies, cap=400, need=250) == ["small@a", "big@a"]
    assert victims([copy("busy", busy=True)], cap=150) is None
    assert victims([], cap=50, need=100) is None  # the model alone is over the cap


def test_one_model_on_several_pods_counts_every_copy() -> None:
    copies = [copy("m", "a"), copy("m", "b"), copy("m", "c")]
    assert victims(copies, cap=350, need=100) == ["m@a"]


def test_registration_cap() -> None:
    assert registration_refusal("t", registered=9, cap=10) is None
    assert registration_refusal("t", registered=100, cap=0) is None
    assert registration_refusal("team-a", registered=10, cap=10) == (
        "tenant 'team-a' has 10 registered models; its cap is 10"
    )
