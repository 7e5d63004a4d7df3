"""What a model accepts and returns, and the check of a request against it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from adapters.datatypes import v2_datatype
from mesh_common.errors import InvalidInput


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor. ``shape`` uses -1 for a variable dimension; ``None`` means unknown.

    ``accepts`` lists the datatypes a request may send (defaults to ``datatype``).
    """

    name: str
    datatype: str
    shape: tuple[int, ...] | None
    accepts: frozenset[str] = field(default_factory=frozenset)

    def accepted(self) -> frozenset[str]:
        return self.accepts or frozenset({self.datatype})


@dataclass(frozen=True)
class ModelSignature:
    """A model's inputs and outputs. ``any_input_name`` lets a single-input model take any name."""

    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    any_input_name: bool = False

    def output_names(self) -> list[str]:
        return [spec.name for spec in self.outputs]


def check_inputs(signature: ModelSignature, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Check request tensors against the signature and return them keyed by the model's names.

    Raises:
        InvalidInput: naming the tensor, what was expected and what came.
    """
    if signature.any_input_name and len(signature.inputs) == 1 and len(inputs) == 1:
        (array,) = inputs.values()
        spec = signature.inputs[0]
        _check_tensor(spec, next(iter(inputs)), array)
        return {spec.name: array}
    expected = {spec.name: spec for spec in signature.inputs}
    unknown = sorted(set(inputs) - set(expected))
    if unknown:
        raise InvalidInput(
            f"unexpected input(s) {', '.join(map(repr, unknown))}; the model takes "
            f"{', '.join(map(repr, expected))}",
        )
    missing = sorted(set(expected) - set(inputs))
    if missing:
        raise InvalidInput(f"missing input(s) {', '.join(map(repr, missing))}")
    for name, array in inputs.items():
        _check_tensor(expected[name], name, array)
    return dict(inputs)


def _check_tensor(spec: TensorSpec, sent_name: str, array: np.ndarray) -> None:
    datatype = v2_datatype(array.dtype)
    if datatype not in spec.accepted():
        raise InvalidInput(
            f"input {sent_name!r}: expected datatype {' or '.join(sorted(spec.accepted()))}, got {datatype}",
            tensor=sent_name,
        )
    if spec.shape is None:
        return
    shape = tuple(array.shape)
    fits = len(shape) == len(spec.shape) and all(
        want < 0 or want == got for want, got in zip(spec.shape, shape, strict=True)
    )
    if not fits:
        raise InvalidInput(
            f"input {sent_name!r}: expected shape {list(spec.shape)}, got {list(shape)}",
            tensor=sent_name,
        )


def select_outputs(signature: ModelSignature, requested: Sequence[str], default: Sequence[str]) -> list[str]:
    """The output names to compute: those requested (checked) or the model's defaults."""
    if not requested:
        return list(default)
    if not signature.outputs:  # outputs are known only once the model has run
        return list(requested)
    known = set(signature.output_names())
    unknown = [name for name in requested if name not in known]
    if unknown:
        raise InvalidInput(
            f"unknown output(s) {', '.join(map(repr, unknown))}; the model has "
            f"{', '.join(map(repr, signature.output_names()))}",
        )
    return list(requested)
