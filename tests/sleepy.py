"""A scikit-learn-style estimator whose every ``predict`` call takes a set time.

It stands in for a heavy model (a large forest, a pipeline with slow feature steps) without
spending CPU, so tests of how the pod shares its inference threads measure the sharing and
not the two cores' contention. It is pickled with joblib and loaded by the real sklearn adapter.
"""

from __future__ import annotations

import time
from pathlib import Path

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
