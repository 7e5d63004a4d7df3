"""A Predictor or InferenceService body -> the model it registers, or why it cannot (pure).

The mapping is ModelMesh-serving's: the model key JSON carries ``storage_key``,
``storage_params``, ``model_type`` and ``schema_path`` as its controller sent them, plus the
mesh's ``tenant`` (the resource's namespace). An InferenceService's ``storageUri`` maps to
storage parameters by scheme as ModelMesh mapped it (``s3://b/p`` -> ``{"type": "s3",
"bucket": "b"}``, ``gs://`` -> ``gcs``, ``pvc://claim/p`` -> ``{"type": "pvc", "name":
"claim"}``, ``http(s)://host/p`` -> ``{"type": "http", "url": "http(s)://host"}``); the path
registered is the URI itself, so a pod finds the artifact with or without a storage-config
entry. ``file://`` is the mesh's own addition (artifacts on the pod's disk).

Refusals (``mesh_common.errors``): ``InvalidSpec`` for a spec that cannot be registered as written,
``NoSupportingRuntime`` for a model type no pod serves, ``RuntimeNotRecognized`` for a runtime
the mesh does not know.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from mesh.k8s.resources import IdScheme, Kind, Registration, ResourceRef
from mesh_common.errors import InvalidSpec, NoSupportingRuntime, RuntimeNotRecognized, quoted, quoted_uri

DEPLOYMENT_MODE = "serving.kserve.io/deploymentMode"
"""The annotation that hands an InferenceService to ModelMesh (value ``ModelMesh``)."""
MODELMESH = "ModelMesh"
SECRET_KEY = "serving.kserve.io/secretKey"
SCHEMA_PATH = "serving.kserve.io/schemaPath"
SERVING_RUNTIME = "serving.kserve.io/servingRuntime"

SCHEMES = frozenset({"s3", "gs", "pvc", "http", "https", "file"})
"""Storage URI schemes a registration may use (ModelMesh's, and ``file`` for the pod's disk)."""

LEGACY_FRAMEWORKS = ("xgboost", "lightgbm", "sklearn", "tensorflow", "onnx", "pytorch", "triton", "pmml")
"""InferenceService predictor framework specs, in the order KServe reads them."""

BUILTIN_RUNTIMES: Mapping[str, frozenset[str]] = {
    "triton-2.x": frozenset({"keras", "onnx", "pytorch", "tensorflow", "tensorrt"}),
    "mlserver-1.x": frozenset({"sklearn", "xgboost", "lightgbm"}),
    "ovms-1.x": frozenset({"openvino_ir", "onnx"}),
    "torchserve-0.x": frozenset({"pytorch-mar"}),
}
"""ModelMesh-serving's built-in ServingRuntimes and the formats each served: a resource that
names one is served in process by the pods when they serve its format."""


@dataclass(frozen=True)
class ModelSpec:
    """What a Predictor and an InferenceService both say about their model."""

    type_name: str
    type_version: str | None = None
    runtime: str | None = None
    path: str = ""
    schema_path: str | None = None
    storage_key: str | None = None
    storage_params: dict[str, str] = field(default_factory=dict)


def registration(
    body: Mapping[str, Any], *, ids: IdScheme, supported: Collection[str]
) -> Registration | None:
    """The model ``body`` registers; None for an InferenceService not handed to ModelMesh.

    Args:
        body: the resource as the API server sends it.
        ids: how names become vmodel ids.
        supported: the model types the mesh's pods serve (``sklearn``, ``onnx``, ...).

    Raises:
        InvalidSpec, NoSupportingRuntime, RuntimeNotRecognized: ModelMesh's reasons.
    """
    ref = ResourceRef.of(dict(body))
    spec = body.get("spec") or {}
    if ref.kind is Kind.INFERENCE_SERVICE:
        annotations = (body.get("metadata") or {}).get("annotations") or {}
        if annotations.get(DEPLOYMENT_MODE) != MODELMESH:
            return None
        hashed: object = {"predictor": spec.get("predictor"), "annotations": _hashed_annotations(annotations)}
        model_id = ids.model_id(ref, hashed)
        model = _from_inference_service(spec, annotations, model_id=model_id)
    else:
        model_id = ids.model_id(ref, spec)
        model = _from_predictor(spec, model_id=model_id)
    model_type = _model_type(model, supported, model_id=model_id)
    key: dict[str, Any] = {"model_type": {"name": model.type_name}, "tenant": ref.namespace}
    if model.type_version:
        key["model_type"]["version"] = model.type_version
    if model.storage_key:
        key["storage_key"] = model.storage_key
    if model.storage_params:
        key["storage_params"] = model.storage_params
    if model.schema_path:
        key["schema_path"] = model.schema_path
    return Registration(
        ref=ref,
        vmodel_id=ids.vmodel_id(ref),
        model_id=model_id,
        owner=ref.kind.source,
        model_type=model_type,
        path=model.path,
        key=json.dumps(key, sort_keys=True),
        tenant=ref.namespace,
    )


def _hashed_annotations(annotations: Mapping[str, Any]) -> dict[str, Any]:
    return {k: annotations[k] for k in (SECRET_KEY, SCHEMA_PATH, SERVING_RUNTIME) if k in annotations}


def _model_type(model: ModelSpec, supported: Collection[str], *, model_id: str) -> str:
    """The mesh's model type for the spec's format (ModelMesh: ``mt:<format>``, ``rt:<runtime>``)."""
    name = model.type_name.lower()
    if model.runtime is not None:
        formats = BUILTIN_RUNTIMES.get(model.runtime)
        if formats is None:
            raise RuntimeNotRecognized(
                f"Specified runtime name not recognized: {quoted(model.runtime)} (the mesh serves "
                f"{', '.join(sorted(supported))} itself; runtimes it accepts: {', '.join(BUILTIN_RUNTIMES)})",
                model_id=model_id,
            )
        if name not in formats:
            raise NoSupportingRuntime(
                f"runtime {quoted(model.runtime)} does not support model type {quoted(model.type_name)}",
                model_id=model_id,
            )
    if name not in supported:
        raise NoSupportingRuntime(
            f"No ServingRuntime supports specified model type {quoted(model.type_name)}; "
            f"the mesh's pods serve {', '.join(sorted(supported))}",
            model_id=model_id,
        )
    return name


def _from_predictor(spec: Mapping[str, Any], *, model_id: str) -> ModelSpec:
    model_type = spec.get("modelType") or {}
    if not isinstance(model_type, Mapping) or not model_type.get("name"):
        raise InvalidSpec("spec.modelType.name is required", model_id=model_id)
    storage = spec.get("storage") or {}
    if storage.get("path") and spec.get("path"):
        raise InvalidSpec("Only one of spec.path and spec.storage.path can be specified", model_id=model_id)
    if storage.get("schemaPath") and spec.get("schemaPath"):
        raise InvalidSpec(
            "Only one of spec.schemaPath and spec.storage.schemaPath can be specified", model_id=model_id
        )
    if storage.get("persistentVolumeClaim") is not None:
        raise InvalidSpec("spec.storage.PersistentVolumeClaim is not supported", model_id=model_id)
    s3 = storage.get("s3")
    if s3 is not None and any(
        storage.get(k) is not None for k in ("path", "schemaPath", "parameters", "key")
    ):
        raise InvalidSpec(
            "spec.storage.s3 cannot be specified with any other keys in spec.storage", model_id=model_id
        )
    path = storage.get("path") or spec.get("path") or ""
    if not path:
        raise InvalidSpec(
            "no storage: spec.storage.path (or the deprecated spec.path) must name the model's files",
            model_id=model_id,
        )
    _check_scheme(str(path), model_id=model_id, what="spec.storage.path")
    params = storage.get("parameters")
    if params is None and s3 is not None and s3.get("bucket"):
        params = {"bucket": s3["bucket"]}
    runtime = (spec.get("runtime") or {}).get("name") or None
    return ModelSpec(
        type_name=str(model_type["name"]),
        type_version=model_type.get("version"),
        runtime=runtime,
        path=str(path),
        schema_path=storage.get("schemaPath") or spec.get("schemaPath"),
        storage_key=storage.get("key") or (s3 or {}).get("secretKey"),
        storage_params=_string_params(params, model_id=model_id),
    )


def _from_inference_service(
    spec: Mapping[str, Any], annotations: Mapping[str, Any], *, model_id: str
) -> ModelSpec:
    predictor = spec.get("predictor") or {}
    framework = next((f for f in LEGACY_FRAMEWORKS if predictor.get(f) is not None), None)
    model = predictor.get("model")
    runtime = annotations.get(SERVING_RUNTIME)
    if model is not None:
        if framework is not None:
            raise InvalidSpec(
                f"the InferenceService cannot have both the model spec and a framework spec ({framework})",
                model_id=model_id,
            )
        if runtime is not None:
            raise InvalidSpec(
                "the InferenceService cannot have both the model spec and the runtime annotation "
                f"{SERVING_RUNTIME}",
                model_id=model_id,
            )
        model_format = model.get("modelFormat") or {}
        if not model_format.get("name"):
            raise InvalidSpec("spec.predictor.model.modelFormat.name is required", model_id=model_id)
        type_name, type_version = model_format["name"], model_format.get("version")
        runtime = model.get("runtime")
        extension = model
    elif framework is not None:
        type_name, type_version, extension = framework, None, predictor[framework]
    else:
        raise InvalidSpec("no valid InferenceService predictor framework found", model_id=model_id)
    path, uri_params = _storage_location(extension, model_id=model_id)
    storage = extension.get("storage") or {}
    params = {**_string_params(storage.get("parameters"), model_id=model_id), **uri_params}
    return ModelSpec(
        type_name=str(type_name),
        type_version=type_version,
        runtime=runtime or None,
        path=path,
        schema_path=storage.get("schemaPath") or annotations.get(SCHEMA_PATH),
        storage_key=storage.get("key") or annotations.get(SECRET_KEY),
        storage_params=params,
    )


def _storage_location(extension: Mapping[str, Any], *, model_id: str) -> tuple[str, dict[str, str]]:
    """The path to register and the storage parameters ModelMesh derived from ``storageUri``."""
    uri = extension.get("storageUri")
    storage_path = (extension.get("storage") or {}).get("path")
    if uri is None:
        if not storage_path:
            raise InvalidSpec(
                "no storage: the InferenceService must have either the storageUri or the storage.path",
                model_id=model_id,
            )
        _check_scheme(str(storage_path), model_id=model_id, what="storage.path")
        return str(storage_path), {}
    if storage_path:
        raise InvalidSpec(
            "the InferenceService cannot have both the storageUri and the storage.path", model_id=model_id
        )
    uri = str(uri)
    scheme = _check_scheme(uri, model_id=model_id, what="storageUri", required=True)
    parts = urlsplit(uri)
    if scheme == "s3":
        return uri, {"type": "s3", "bucket": parts.netloc}
    if scheme == "gs":
        return uri, {"type": "gcs", "bucket": parts.netloc}
    if scheme == "pvc":
        return uri, {"type": "pvc", "name": parts.netloc}
    if scheme in ("http", "https"):
        return uri, {"type": "http", "url": f"{scheme}://{parts.netloc}"}
    return uri, {}  # file://


def _check_scheme(path: str, *, model_id: str, what: str, required: bool = False) -> str:
    if "://" not in path:
        if required:
            raise InvalidSpec(f"{what} {quoted_uri(path)} is not a URI (scheme://...)", model_id=model_id)
        return ""
    try:
        scheme = urlsplit(path).scheme.lower()
    except ValueError as exc:
        raise InvalidSpec(f"{what} {quoted_uri(path)} is not a valid URI: {exc}", model_id=model_id) from None
    if scheme not in SCHEMES:
        raise InvalidSpec(
            f"unsupported storageUri scheme {quoted(scheme)} in {what}; supported: "
            f"{', '.join(s + '://' for s in sorted(SCHEMES))}",
            model_id=model_id,
        )
    return scheme


def _string_params(params: object, *, model_id: str) -> dict[str, str]:
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise InvalidSpec("storage.parameters must be a map of strings", model_id=model_id)
    return {str(k): str(v) for k, v in params.items()}
