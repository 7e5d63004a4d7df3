"""Small real models of each format, built on the spot (for ``mesh demo``, tests and benchmarks).

Each builder trains or constructs the model, saves it under ``directory`` and
returns the path. Sizes are controlled by the feature count / hidden width.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def sklearn_classifier(
    directory: Path, *, features: int = 4, classes: int = 3, seed: int = 0, name: str = "model.joblib"
) -> Path:
    """A LogisticRegression on separable blobs; ``features * classes * 8`` bytes of weights."""
    import joblib
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, size=(classes, features))
    labels = np.repeat(np.arange(classes), 20)
    data = centers[labels] + rng.normal(0, 1, size=(labels.size, features))
    model = LogisticRegression(max_iter=200).fit(data, labels)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    joblib.dump(model, path)
    return path


class _Exit:
    """Unpickles as a call of ``os._exit(code)``."""

    def __init__(self, code: int) -> None:
        self.code = code

    def __reduce__(self) -> tuple[object, tuple[int]]:
        import os

        return os._exit, (self.code,)


def poison_pickle(directory: Path, *, exit_code: int = 3, name: str = "model.joblib") -> Path:
    """A joblib artifact whose loading ends the loading process at once with ``exit_code``
    (``os._exit``: no exception, no cleanup), as a crashing extension or the OOM killer would."""
    import joblib

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    joblib.dump(_Exit(exit_code), path)
    return path


class ExitsOnPredict:
    """An estimator that loads fine and ends its process at once on every call of ``predict``."""

    n_features_in_ = 4

    def __init__(self, code: int) -> None:
        self.code = code

    def predict(self, features: np.ndarray) -> np.ndarray:
        import os

        os._exit(self.code)


def poison_estimator(directory: Path, *, exit_code: int = 5, name: str = "model.joblib") -> Path:
    """A joblib artifact that loads, and whose every call ends the process with ``exit_code``."""
    import joblib

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    joblib.dump(ExitsOnPredict(exit_code), path)
    return path


def onnx_mlp(
    directory: Path,
    *,
    features: int = 4,
    hidden: int = 16,
    outputs: int = 3,
    seed: int = 0,
    name: str = "model.onnx",
) -> Path:
    """``softmax(relu(x @ W1 + b1) @ W2 + b2)`` in FP32 with input ``x`` and outputs ``scores``/``probs``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = {
        "W1": rng.normal(size=(features, hidden)).astype(np.float32),
        "b1": rng.normal(size=(hidden,)).astype(np.float32),
        "W2": rng.normal(size=(hidden, outputs)).astype(np.float32),
        "b2": rng.normal(size=(outputs,)).astype(np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "W2"], ["s0"]),
        helper.make_node("Add", ["s0", "b2"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", outputs]),
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", outputs]),
        ],
        initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    onnx.save(model, path)
    return path


def torchscript_mlp(
    directory: Path,
    *,
    features: int = 4,
    hidden: int = 16,
    outputs: int = 3,
    seed: int = 0,
    name: str = "model.pt",
) -> Path:
    """A scripted two-layer MLP taking ``x`` (FP32, ``[batch, features]``)."""
    import torch

    torch.manual_seed(seed)

    class MLP(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.hidden = torch.nn.Linear(features, hidden)
            self.out = torch.nn.Linear(hidden, outputs)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            result: torch.Tensor = self.out(torch.relu(self.hidden(x)))
            return result

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    torch.jit.save(torch.jit.script(MLP().eval()), str(path))
    return path
