"""The simulator: traces it generates and reads, replays under each policy, and its command."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from placement.simulate import (
    BELADY,
    Request,
    decision_time,
    generate_trace,
    main,
    read_trace,
    replay,
    write_trace,
)

MIB = 2**20


def test_generated_trace_has_the_promised_shape() -> None:
    trace = generate_trace(models=400, requests=8000, seed=3, scan_models=100)
    assert len(trace) == 8000 + 100
    assert all(a.time < b.time for a, b in itertools.pairwise(trace))
    counts: dict[str, int] = {}
    for r in trace:
        counts[r.model] = counts.get(r.model, 0) + 1
    ranked = sorted(counts.values(), reverse=True)
    assert ranked[0] > 20 * ranked[len(ranked) // 2]  # skewed (Zipf), not uniform
    sizes = sorted({r.model: r.size for r in trace}.values())
    assert sizes[-1] > 20 * sizes[len(sizes) // 2]  # mixed sizes
    scanner = [r for r in trace if r.tenant == "tenant-0"]
    assert len({r.model for r in scanner}) == 100  # the scanner's models, each read at least once
    assert generate_trace(models=400, requests=8000, seed=3, scan_models=100) == trace  # seeded


def test_trace_files_round_trip_and_bad_lines_are_named(tmp_path: Path) -> None:
    trace = generate_trace(models=50, requests=500, seed=1, scan_models=10)
    path = tmp_path / "trace.jsonl"
    write_trace(path, trace)
    again = read_trace(path)
    assert [(r.model, r.size, r.load_ms) for r in again] == [(r.model, r.size, r.load_ms) for r in trace]
    path.write_text(json.dumps({"time": 1, "model": "m"}) + "\n")
    with pytest.raises(SystemExit, match=r"trace.jsonl:1: not a trace line"):
        read_trace(path)


def hand_trace(models: list[str], *, size: int = 10 * MIB) -> list[Request]:
    return [Request(float(i), m, "t", size, 100.0) for i, m in enumerate(models)]


def test_replay_counts_hits_loads_and_evictions_by_hand() -> None:
    # One pod holding two models: a b a c a b -> loads a, b, c (evicts b under LRU), b again.
    trace = hand_trace(["a", "b", "a", "c", "a", "b"])
    lru = replay(trace, pods=1, capacity=20 * MIB, policy="lru")
    assert (lru.hits, lru.loads, lru.evictions, lru.bytes_loaded) == (2, 4, 2, 40 * MIB)
    best = replay(trace, pods=1, capacity=20 * MIB, policy=BELADY)
    assert best.hits >= lru.hits
    spread = replay(trace, pods=3, capacity=20 * MIB, policy="lru")
    assert (spread.hits, spread.loads, spread.evictions) == (3, 3, 0)  # the fleet holds all three


def test_a_model_larger_than_every_pod_is_refused_not_loaded() -> None:
    result = replay(hand_trace(["big"], size=50 * MIB), pods=2, capacity=20 * MIB, policy="gdsf")
    assert (result.refused, result.loads) == (1, 0)


def test_on_a_generated_trace_gdsf_beats_lru_and_belady_beats_both() -> None:
    trace = generate_trace(models=600, requests=20_000, seed=5, scan_models=150)
    results = {p: replay(trace, pods=2, capacity=512 * MIB, policy=p) for p in ("lru", "gdsf", BELADY)}
    assert results["lru"].hit_ratio < results["gdsf"].hit_ratio < results[BELADY].hit_ratio
    assert results["gdsf"].load_ms < results["lru"].load_ms


def test_decision_time_is_measured_at_scale() -> None:
    choose_s, victims_s = decision_time(pods=100, models=100_000, rounds=20)
    assert 0 < choose_s < 0.05 and 0 < victims_s < 0.05  # a sanity bound, not a speed assertion


def test_the_command_prints_every_policy_and_the_gap(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--models", "300", "--requests", "6000", "--pods", "2", "--capacity", "256MiB"]) == 0
    out = capsys.readouterr().out
    for policy in ("lru", "gdsf", "belady"):
        assert f"\n{policy} " in out
    assert "of the LRU -> Belady hit-ratio gap" in out
    assert "one placement decision at 100 pods x 100,000 models" in out
