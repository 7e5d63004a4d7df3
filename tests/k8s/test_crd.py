"""The handlers, the status module and the chart's CRD agree: group, version, plural, printer
columns, and every status field written (a field missing from the schema would be pruned by the
API server without an error). InferenceService statuses are checked against KServe's schema."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import kopf
import kubernetes_validate
import pytest

from mesh.k8s.handlers import Handlers, NamespaceScope, register
from mesh.k8s.resources import Kind
from mesh.k8s.status import (
    PREDICTOR_STATUS_FIELDS,
    LoadFailureView,
    ModelView,
    Observation,
    VModelView,
    inference_service_status,
    predictor_status,
)
from mesh_common.errors import InvalidSpec, NoSupportingRuntime
from tests.k8s.schemas import check, isvc_schema, predictor_crd, predictor_schema, render_crd

NOW = 1_780_000_000_000


def observations() -> list[Observation]:
    one = VModelView("m", "m__ksp-1", "m__ksp-1")
    moving = VModelView("m", "m__ksp-1", "m__ksp-2")
    failed = ModelView(
        "m__ksp-2", "LOADING_FAILED", failed_copies=1, failures=(LoadFailureView("p", "x", NOW),)
    )
    loaded = ModelView("m__ksp-1", "LOADED", loaded_copies=2)
    base = {"vmodel_id": "m", "model_id": "m__ksp-1", "grpc_endpoint": "grpc://mesh.ns.svc:8033"}
    return [
        Observation(**base),
        Observation(**base, vmodel=one, models={"m__ksp-1": loaded}, http_endpoint="http://mesh.ns.svc:8008"),
        Observation(**base, vmodel=moving, models={"m__ksp-1": loaded, "m__ksp-2": failed}),
        Observation(
            **base, vmodel=one, models={"m__ksp-1": ModelView("m__ksp-1", "NOT_LOADED", blocked=True)}
        ),
        Observation(**base, refusal=InvalidSpec("no storage", model_id="m__ksp-1")),
        Observation(**base, refusal=NoSupportingRuntime("tensorflow", model_id="m__ksp-1")),
        Observation(**base, vmodel=one, models={"m__ksp-1": loaded}, unreachable="Waiting for the mesh"),
    ]


@pytest.fixture(scope="module")
def crd(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return predictor_crd(tmp_path_factory.mktemp("helm"))


def test_crd_names_what_the_handlers_watch(crd: dict) -> None:
    kind = Kind.PREDICTOR
    assert crd["metadata"]["name"] == f"{kind.plural}.{kind.group}"
    assert crd["spec"]["group"] == kind.group and crd["spec"]["scope"] == "Namespaced"
    assert crd["spec"]["names"]["plural"] == kind.plural and crd["spec"]["names"]["kind"] == kind.kind
    (version,) = crd["spec"]["versions"]
    assert (version["name"], version["served"], version["storage"]) == (kind.version, True, True)
    assert version["subresources"] == {"status": {}}
    columns = [(c["name"], c["jsonPath"]) for c in version["additionalPrinterColumns"]]
    assert columns == [  # ModelMesh's printer columns
        ("Type", ".spec.modelType.name"),
        ("Available", ".status.available"),
        ("ActiveModel", ".status.activeModelState"),
        ("TargetModel", ".status.targetModelState"),
        ("Transition", ".status.transitionStatus"),
        ("Age", ".metadata.creationTimestamp"),
    ]
    handlers = Handlers(None, NamespaceScope(namespaces=("a",)))  # type: ignore[arg-type]
    watched = {
        (w["group"], w["version"], w["plural"])
        for w in register(kopf.OperatorRegistry(), handlers, NamespaceScope(namespaces=("a",)))
    }
    assert (kind.group, kind.version, kind.plural) in watched
    isvc = Kind.INFERENCE_SERVICE
    assert (isvc.group, isvc.version, isvc.plural) == ("serving.kserve.io", "v1beta1", "inferenceservices")
    assert (isvc.group, isvc.version, isvc.plural) in watched


def test_crd_is_valid_and_optional(crd: dict, tmp_path: Path) -> None:
    kubernetes_validate.validate(crd, "1.33", strict=True)
    assert render_crd(tmp_path, install=False) == []


def test_every_predictor_status_field_is_in_the_crd(crd: dict) -> None:
    schema = predictor_schema(crd)
    assert set(PREDICTOR_STATUS_FIELDS) <= set(schema["properties"]["status"]["properties"])
    for obs in observations():
        status = predictor_status(obs, previous=None, now_ms=NOW)
        check({"apiVersion": "serving.kserve.io/v1alpha1", "kind": "Predictor", "status": status}, schema)
    with pytest.raises(jsonschema.ValidationError):  # the check can fail
        check({"status": {**status, "activeModelState": "Ready"}}, schema)


def test_every_inference_service_status_field_is_in_kserves_schema() -> None:
    schema = isvc_schema()
    for obs in observations():
        status = inference_service_status(
            predictor_status(obs, previous=None, now_ms=NOW), previous=None, now_ms=NOW
        )
        check({"kind": "InferenceService", "status": status}, schema)
    with pytest.raises(AssertionError):
        check({"status": {**status, "modelStatus": {**status["modelStatus"], "vModelId": "m"}}}, schema)
