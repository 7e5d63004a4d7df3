"""The cache pressure's bookkeeping: the recently used working set, loaded or evicted."""

from __future__ import annotations

from mesh.cache import CachedModel
from mesh.working_set import WorkingSet


def cached(model_id: str, size: int, last_used: float) -> CachedModel:
    return CachedModel(model_id, size, last_used, in_use=0, loaded=True)


def test_recent_models_count_loaded_or_evicted_and_old_ones_go() -> None:
    ws = WorkingSet(window_s=300)
    ws.evicted("a", 100, last_used=1000.0)
    ws.evicted("b", 200, last_used=1250.0)
    loaded = [cached("c", 400, 1290.0), cached("idle", 800, 900.0)]
    assert ws.recent_bytes(loaded, now=1300.0) == 700  # a, b, c; "idle" is past the window
    assert ws.pressure(loaded, waiting={"w": 300}, capacity_bytes=500, now=1300.0) == 2.0
    assert ws.recent_bytes(loaded, now=1301.0) == 600  # a left the window ...
    assert len(ws) == 1  # ... and the bookkeeping


def test_a_model_loaded_again_counts_once_and_unregistered_ones_go() -> None:
    ws = WorkingSet(window_s=60)
    ws.evicted("a", 100, last_used=10.0)
    assert ws.recent_bytes([cached("a", 120, 20.0)], now=30.0) == 120
    ws.forget("a")
    assert ws.recent_bytes([], now=30.0) == 0 and len(ws) == 0


def test_an_evicted_model_waiting_for_room_again_counts_once() -> None:
    ws = WorkingSet(window_s=60)
    ws.evicted("a", 600, last_used=10.0)  # evicted, then asked for again: its load waits for room
    waiting = {"a": 600, "b": 100}
    assert ws.pressure([], waiting=waiting, capacity_bytes=1000, now=20.0) == 0.7
