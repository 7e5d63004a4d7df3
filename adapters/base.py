"""The adapter contract, after ModelMesh's runtime SPI (``mmesh.ModelRuntime``).

``predictModelSize`` -> ``ModelAdapter.predict_size``; ``loadModel`` (with its
measured ``sizeInBytes``) -> ``ModelAdapter.load``; ``unloadModel`` ->
``LoadedModel.unload``. Loads and inference are blocking calls: the pod runs
them on its executors, never on the event loop.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np

from adapters.artifacts import artifact_bytes
from adapters.signature import ModelSignature


class LoadedModel(ABC):
    """A model in memory. ``size_bytes`` is the adapter's measure of its footprint."""

    signature: ModelSignature
    size_bytes: int
    device: str = "cpu"
    """Where the model runs: ``cpu``, or ``cuda`` when the adapter placed it on a GPU."""
    row_independent: bool = False
    """True when each output row depends only on the same input row (dimension 0 is the batch):
    the pod may then run concurrent calls as one batch. Only adapters that know it set it."""

    @abstractmethod
    def infer(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """Run the model on checked inputs; ``outputs`` is empty for the model's defaults.

        Raises ``MemoryError`` when the framework cannot allocate what the call needs (adapters
        translate their framework's own out-of-memory errors), so the caller learns that the
        request was too big for the pod rather than wrong."""

    def unload(self) -> None:  # noqa: B027 - most models need nothing beyond dropping references
        """Release what the model holds beyond Python references."""


class ModelAdapter(ABC):
    """Loads one model format from a local artifact path."""

    model_type: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]]
    # In-memory bytes per artifact byte before any load was measured, and a fixed overhead.
    size_factor: ClassVar[float] = 1.5
    size_overhead: ClassVar[int] = 64 * 1024
    runs_code_on_load: ClassVar[bool] = False
    """True for formats whose loading runs code from the artifact (pickle): the pod loads such an
    artifact in a worker process first (``adapters.probe``), so one that kills its loader does not
    kill the pod."""

    def predict_size(self, path: Path) -> int:
        """A conservative estimate of the loaded size, from the artifact's size alone."""
        return int(artifact_bytes(path) * self.size_factor) + self.size_overhead

    @abstractmethod
    def load(self, path: Path) -> LoadedModel:
        """Load from ``path`` (file or directory). Raises on a missing or corrupt artifact."""
