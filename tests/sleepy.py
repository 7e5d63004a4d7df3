"""scikit-learn-style estimators for tests of how the pod runs calls: one whose every ``predict``
call takes a set time, one that notes the thread that ran it, one whose load waits at a gate.

It stands in for a heavy model (a large forest, a pipeline with slow feature steps) without
spending CPU, so tests of how the pod shares its inference threads measure the sharing and
not the two cores' contention. It is pickled with joblib and loaded by the real sklearn adapter.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import ClassVar

import joblib
import numpy as np


class SleepyEstimator:
    def __init__(self, seconds: float, features: int = 4) -> None:
        self.seconds = seconds
        self.n_features_in_ = features

    def predict(self, rows: np.ndarray) -> np.ndarray:
        time.sleep(self.seconds)
        return np.zeros(len(rows))


def sleepy_model(directory: Path, seconds: float) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "model.joblib"
    joblib.dump(SleepyEstimator(seconds), path)
    return path


class ThreadNoting:
    """A fast estimator that notes which thread ran each of its calls (in ``THREADS``)."""

    THREADS: ClassVar[list[str]] = []

    n_features_in_ = 4

    def predict(self, rows: np.ndarray) -> np.ndarray:
        ThreadNoting.THREADS.append(threading.current_thread().name)
        return np.zeros(len(rows))


def thread_noting_model(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "model.joblib"
    joblib.dump(ThreadNoting(), path)
    return path


class GatedLoad:
    """A fast estimator whose loading (unpickling) waits while its gate file exists, up to
    ``GATE_LIMIT_S``: a test holds a load open for as long as it needs, and lets it go at once."""

    GATE_LIMIT_S: ClassVar[float] = 60.0
    n_features_in_ = 4

    def __init__(self, gate: Path) -> None:
        self.gate = gate

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        deadline = time.monotonic() + self.GATE_LIMIT_S
        while self.gate.exists() and time.monotonic() < deadline:
            time.sleep(0.01)

    def predict(self, rows: np.ndarray) -> np.ndarray:
        return np.zeros(len(rows))


def gated_model(directory: Path, gate: Path) -> Path:
    """A model whose every load waits while ``gate`` exists."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "model.joblib"
    joblib.dump(GatedLoad(gate), path)
    return path
