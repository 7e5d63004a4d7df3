"""Resource bodies as the API server sends them (full objects: apiVersion, kind, metadata with
uid, resourceVersion, generation, creationTimestamp, finalizers, annotations)."""

from __future__ import annotations

import copy
import uuid
from typing import Any


def _metadata(name: str, namespace: str, annotations: dict[str, str] | None) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "uid": str(uuid.uuid4()),
        "resourceVersion": "1001",
        "generation": 1,
        "creationTimestamp": "2026-12-06T05:00:00Z",
        "finalizers": [],
        "annotations": dict(annotations or {}),
        "labels": {},
        "managedFields": [{"manager": "kubectl-client-side-apply", "operation": "Update"}],
    }


def predictor(
    name: str,
    storage_path: str,
    *,
    namespace: str = "team-a",
    model_type: str = "sklearn",
    storage: dict[str, Any] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    body_spec: dict[str, Any] = {"modelType": {"name": model_type}, **spec}
    if storage is not None:
        body_spec["storage"] = storage
    elif storage_path:
        body_spec["storage"] = {"path": storage_path}
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "Predictor",
        "metadata": _metadata(name, namespace, None),
        "spec": body_spec,
    }


def inference_service(
    name: str,
    storage_uri: str | None,
    *,
    namespace: str = "team-a",
    model_format: str = "sklearn",
    modelmesh: bool = True,
    annotations: dict[str, str] | None = None,
    model: dict[str, Any] | None = None,
) -> dict[str, Any]:
    notes = dict(annotations or {})
    if modelmesh:
        notes["serving.kserve.io/deploymentMode"] = "ModelMesh"
    spec_model: dict[str, Any] = {"modelFormat": {"name": model_format}}
    if storage_uri is not None:
        spec_model["storageUri"] = storage_uri
    spec_model.update(model or {})
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": _metadata(name, namespace, notes),
        "spec": {"predictor": {"model": spec_model}},
    }


def changed(body: dict[str, Any], **spec: Any) -> dict[str, Any]:
    """The body after a spec update (the API server bumps resourceVersion and generation)."""
    new = copy.deepcopy(body)
    new["spec"].update(spec)
    new["metadata"]["resourceVersion"] = str(int(new["metadata"]["resourceVersion"]) + 1)
    new["metadata"]["generation"] += 1
    return new
