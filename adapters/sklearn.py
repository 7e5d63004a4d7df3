"""scikit-learn estimators and pipelines saved with joblib or pickle.

Outputs: ``predict`` (the default) and, for estimators that have it,
``predict_proba`` when a request names it. The single input takes any name, as
MLServer's and KServe's sklearn runtimes do, and any numeric datatype.
"""

from __future__ import annotations

import pickle
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from adapters.artifacts import find_artifact
from adapters.base import LoadedModel, ModelAdapter
from adapters.datatypes import NUMERIC, v2_datatype
from adapters.signature import ModelSignature, TensorSpec

INPUT_NAME = "input-0"


class SklearnModel(LoadedModel):
    row_independent = True  # predict/predict_proba score each sample on its own

    def __init__(self, estimator: Any, size_bytes: int) -> None:
        self._estimator = estimator
        self.size_bytes = size_bytes
        self.signature = _signature(estimator)

    def infer(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        (features,) = inputs.values()
        results: dict[str, np.ndarray] = {}
        for name in outputs or ("predict",):
            method = getattr(self._estimator, name)
            results[name] = np.asarray(method(features))
        return results


class SklearnAdapter(ModelAdapter):
    model_type = "sklearn"
    suffixes = (".joblib", ".pkl", ".pickle")
    size_factor = 1.2
    runs_code_on_load = True  # unpickling runs whatever the pickle names

    def load(self, path: Path) -> SklearnModel:
        artifact = find_artifact(path, self.suffixes)
        try:
            estimator = joblib.load(artifact)
        except (pickle.UnpicklingError, EOFError, ValueError, KeyError, IndexError, ImportError) as exc:
            raise ValueError(f"cannot unpickle {artifact.name}: {exc}") from exc
        if not hasattr(estimator, "predict"):
            raise ValueError(f"{artifact.name} holds a {type(estimator).__name__}, which has no predict()")
        size = max(_deep_size(estimator), artifact.stat().st_size) + self.size_overhead
        return SklearnModel(estimator, size)


def _signature(estimator: Any) -> ModelSignature:
    n_features = getattr(estimator, "n_features_in_", None)
    shape = (-1, int(n_features)) if n_features is not None else None
    classes = getattr(estimator, "classes_", None)
    predict_type = v2_datatype(np.asarray(classes).dtype) if classes is not None else "FP64"
    outputs = [TensorSpec("predict", predict_type, (-1,))]
    if hasattr(estimator, "predict_proba"):
        width = len(classes) if classes is not None else -1
        outputs.append(TensorSpec("predict_proba", "FP64", (-1, width)))
    return ModelSignature(
        platform="sklearn",
        inputs=(TensorSpec(INPUT_NAME, "FP64", shape, accepts=NUMERIC),),
        outputs=tuple(outputs),
        any_input_name=True,
    )


def _deep_size(root: Any) -> int:
    """Bytes held by an estimator graph: numpy buffers plus Python object overhead."""
    seen: set[int] = set()
    stack = [root]
    total = 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, np.ndarray):
            total += obj.nbytes + sys.getsizeof(obj) - (obj.nbytes if obj.base is None else 0)
            if obj.dtype == object:
                stack.extend(obj.ravel().tolist())
            continue
        total += sys.getsizeof(obj)
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif hasattr(obj, "__dict__"):
            stack.append(vars(obj))
    return total
