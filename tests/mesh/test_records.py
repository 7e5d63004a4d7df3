"""Unit tests of the registry records' own changes and of the one rule for which copies count."""

from __future__ import annotations

from dataclasses import replace

import pytest

from mesh.records import (
    ANY_STATE,
    LOADED,
    CopyRecord,
    FailureRecord,
    Mine,
    ModelInfo,
    ModelRecord,
    ModelState,
    VModelRecord,
)

LOADING = ModelState.LOADING


def record(**copies: CopyRecord) -> ModelRecord:
    return ModelRecord("m", ModelInfo("sklearn", "s3://b/m"), copies=dict(copies))


def loaded(since_ms: int = 1, why: str = "") -> CopyRecord:
    return CopyRecord(ModelState.LOADED, since_ms, why)


def loading(since_ms: int = 1, why: str = "") -> CopyRecord:
    return CopyRecord(LOADING, since_ms, why)


# which copies count


def test_counted_copies_need_a_live_pod_and_a_held_state() -> None:
    r = record(a=loaded(), b=loading(), dead=loaded())
    assert r.counted_copies({"a", "b"}) == {"a": loaded(), "b": loading()}
    assert r.counted_copies({"a", "b"}, states=LOADED) == {"a": loaded()}


def test_counted_copies_without_a_live_set_count_every_recorded_pod() -> None:
    r = record(a=loaded(), dead=loading())
    assert set(r.counted_copies(None)) == {"a", "dead"}


def test_this_pods_copy_counts_as_mine_says() -> None:
    r = record(me=loaded(), a=loaded())
    live = {"a"}  # this pod's own record is not in its mirror yet
    assert set(r.counted_copies(live, here="me", mine=Mine.ALWAYS)) == {"me", "a"}
    assert set(r.counted_copies(live, here="me", mine=Mine.LIKE_OTHERS)) == {"a"}
    assert set(r.counted_copies({"a", "me"}, here="me", mine=Mine.LIKE_OTHERS)) == {"a", "me"}
    assert set(r.counted_copies({"a", "me"}, here="me", mine=Mine.NEVER)) == {"a"}


def test_excluded_pods_do_not_count() -> None:
    r = record(a=loaded(), b=loaded())
    assert set(r.counted_copies({"a", "b"}, excluded={"b"})) == {"a"}


def test_any_state_counts_every_copy_of_a_live_pod() -> None:
    r = record(a=CopyRecord(ModelState.NOT_LOADED, 1), b=loading())
    assert set(r.counted_copies({"a", "b"}, states=ANY_STATE)) == {"a", "b"}
    assert set(r.counted_copies({"a", "b"})) == {"b"}


# copies


def test_a_claim_adds_a_loading_copy_unless_the_pod_has_one() -> None:
    claimed = record().with_claim("p", 5, "placed")
    assert claimed.copies == {"p": loading(5, "placed")}
    held = record(p=loaded(1))
    assert held.with_claim("p", 5, "placed") is held


def test_marked_keeps_why_and_is_a_no_op_in_the_same_state() -> None:
    r = record(p=loading(1, "placed"))
    assert r.marked("p", ModelState.LOADED, 9).copies == {"p": loaded(9, "placed")}
    assert r.marked("p", LOADING, 9) is r
    assert record().marked("p", LOADING, 3).copies == {"p": loading(3)}


def test_without_copy_drops_one_pods_copy_only() -> None:
    r = record(a=loaded(), b=loaded())
    assert set(r.without_copy("a").copies) == {"b"}
    assert r.without_copy("absent") is r


def test_without_claim_drops_only_a_loading_copy() -> None:
    r = record(a=loading(), b=loaded())
    assert set(r.without_claim("a").copies) == {"b"}
    assert r.without_claim("b") is r
    assert r.without_claim("absent") is r


def test_a_load_marks_the_copy_loaded_clears_its_failure_and_measures_it() -> None:
    r = record(p=loading(1, "placed"))
    r = replace(r, failures={"p": FailureRecord(1, "old"), "q": FailureRecord(2, "boom")})
    done = r.with_load("p", 10, size_bytes=300, load_ms=40)
    assert done.copies["p"] == loaded(10, "placed")
    assert set(done.failures) == {"q"}
    assert (done.size_bytes, done.load_ms) == (300, 40)
    assert done.history[-1].what == "loaded in 40 ms (300 bytes)"
    assert r.copies["p"].state is LOADING  # records are immutable


def test_recorded_loaded_writes_a_missed_load_back_once() -> None:
    r = record(p=loading(1, "placed")).recorded_loaded("p", 7, size_bytes=50)
    assert r.copies["p"] == loaded(7, "placed")
    assert r.size_bytes == 50
    assert r.history[-1].what == "recorded as loaded here again (registry missed it)"
    assert r.recorded_loaded("p", 8, size_bytes=60) is r


def test_a_failure_drops_the_copy_and_records_the_reason() -> None:
    r = record(p=loading()).with_failure("p", 4, "x" * 400)
    assert r.copies == {}
    assert r.failures == {"p": FailureRecord(4, "x" * 400)}
    assert r.history[-1].what == "load failed: " + "x" * 300


def test_without_failures_forgets_only_the_named_pods() -> None:
    r = record().with_failure("a", 1, "one").with_failure("b", 2, "two")
    assert set(r.without_failures(["a"]).failures) == {"b"}


def test_cleared_lifts_failures_crashes_and_the_block() -> None:
    r = record()
    for t in range(3):
        r = r.with_crash(t, f"p{t}", "died", limit=3, window_ms=100)
    assert r.blocked
    cleared = r.cleared(50, "op")
    assert (cleared.failures, cleared.crashes, cleared.blocked) == ({}, (), "")
    assert cleared.history[-1].what == "load failures cleared by an operator"
    assert cleared.history[-1].pod_id == "op"


def test_an_unload_drops_the_copy_and_notes_when_it_was_last_used() -> None:
    r = record(p=loaded(), q=loaded()).with_unload("p", 9, what="evicted", last_used_ms=8)
    assert set(r.copies) == {"q"}
    assert r.last_used_ms == 8
    assert (r.history[-1].time_ms, r.history[-1].what) == (9, "evicted")


def test_a_pod_that_died_loading_the_model_counts_as_a_crash() -> None:
    r = record(p=loading(), q=loaded()).without_dead_pod("p", 5, limit=3, window_ms=100)
    assert set(r.copies) == {"q"}
    assert [c.what for c in r.crashes] == ["pod p died while loading it"]
    assert r.failures["p"].reason == "pod p died while loading it"


def test_a_pod_that_died_holding_the_model_is_no_crash() -> None:
    r = record(p=loaded(), q=loaded()).without_dead_pod("p", 5, limit=1, window_ms=100)
    assert set(r.copies) == {"q"}
    assert (r.crashes, r.failures, r.blocked) == ((), {}, "")


def test_as_registered_has_no_copies_or_failures() -> None:
    r = record(p=loaded()).with_failure("q", 1, "boom").as_registered()
    assert (r.copies, r.failures, r.model_id) == ({}, {}, "m")


def test_changed_records_survive_json() -> None:
    r = record(p=loading(1, "placed")).with_load("p", 3, size_bytes=9, load_ms=2).with_failure("q", 4, "no")
    assert ModelRecord.from_json(r.to_json()) == r


# vmodels


def test_a_vmodel_is_retargeted_then_promoted() -> None:
    v = VModelRecord("v", "m1", "m1")
    moved = v.retargeted("m2", active="m1")
    assert (moved.active_model_id, moved.target_model_id) == ("m1", "m2")
    assert moved.promoted("m2").active_model_id == "m2"
    assert moved.promoted("m3") is moved  # retargeted again meanwhile: no promotion


@pytest.mark.parametrize(
    ("replaced", "expected"),
    [(None, None), (VModelRecord("v", "m0", "m1"), VModelRecord("v", "m0", "m1"))],
)
def test_backing_out_restores_what_the_write_replaced(
    replaced: VModelRecord | None, expected: VModelRecord | None
) -> None:
    v = VModelRecord("v", "m1", "m2")
    assert v.backed_out("m2", replaced) == expected
    assert v.backed_out("m9", replaced) is v  # a later write stands
