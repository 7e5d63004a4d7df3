"""A resource body -> the model it registers, and every spec the controller must refuse."""

from __future__ import annotations

import json

import pytest

from mesh.k8s.resources import IdScheme, Kind, ResourceRef, spec_hash
from mesh.k8s.spec import registration
from mesh_common.errors import InvalidSpec, NoSupportingRuntime, RuntimeNotRecognized
from tests.k8s.bodies import inference_service, predictor

SUPPORTED = ("onnx", "pytorch", "sklearn")
ONE = IdScheme()
SEVERAL = IdScheme(several_namespaces=True)


def plan(body, ids=ONE):
    return registration(body, ids=ids, supported=SUPPORTED)


def test_predictor_registers_modelmesh_ids_key_and_tenant() -> None:
    body = predictor(
        "mnist",
        "sk/model.joblib",
        storage={"path": "sk/model.joblib", "key": "minio", "parameters": {"bucket": "b"}},
    )
    reg = plan(body)
    assert reg is not None
    assert reg.vmodel_id == "mnist" and reg.owner == "ksp" and reg.tenant == "team-a"
    assert reg.model_id == f"mnist__ksp-{spec_hash(body['spec'])}" and len(spec_hash(body["spec"])) == 10
    assert reg.model_type == "sklearn" and reg.path == "sk/model.joblib"
    assert json.loads(reg.key) == {
        "model_type": {"name": "sklearn"},
        "storage_key": "minio",
        "storage_params": {"bucket": "b"},
        "tenant": "team-a",
    }


def test_a_spec_change_changes_the_concrete_id_not_the_vmodel() -> None:
    first = plan(predictor("m", "/models/a.joblib"))
    second = plan(predictor("m", "/models/b.joblib"))
    assert first and second
    assert first.vmodel_id == second.vmodel_id == "m"
    assert first.model_id != second.model_id
    assert plan(predictor("m", "/models/a.joblib")).model_id == first.model_id  # stable


def test_ids_do_not_collide_across_namespaces_when_serving_several() -> None:
    a = plan(predictor("m", "/x", namespace="a"), SEVERAL)
    b = plan(predictor("m", "/x", namespace="b"), SEVERAL)
    assert a and b and a.vmodel_id == "m.a" and b.vmodel_id == "m.b"
    assert a.model_id.startswith("m.a__ksp-") and a.model_id != b.model_id
    assert a.tenant == "a" and b.tenant == "b"


def test_predictor_legacy_s3_and_deprecated_path() -> None:
    reg = plan(predictor("m", "", storage={"s3": {"secretKey": "minio", "bucket": "models"}}, path="sk/m"))
    assert reg is not None and reg.path == "sk/m"
    assert json.loads(reg.key)["storage_key"] == "minio"
    assert json.loads(reg.key)["storage_params"] == {"bucket": "models"}


@pytest.mark.parametrize(
    ("uri", "path", "params"),
    [
        ("s3://bucket/sk/model.joblib", "s3://bucket/sk/model.joblib", {"type": "s3", "bucket": "bucket"}),
        ("gs://bkt/m.onnx", "gs://bkt/m.onnx", {"type": "gcs", "bucket": "bkt"}),
        ("pvc://claim/dir/m.onnx", "pvc://claim/dir/m.onnx", {"type": "pvc", "name": "claim"}),
        (
            "https://host:8443/m/x.onnx",
            "https://host:8443/m/x.onnx",
            {"type": "http", "url": "https://host:8443"},
        ),
        ("file:///models/x.onnx", "file:///models/x.onnx", None),
    ],
)
def test_storage_uri_schemes_map_to_storage_parameters(uri: str, path: str, params) -> None:
    reg = plan(
        inference_service("m", uri, model_format="onnx", annotations={"serving.kserve.io/secretKey": "k"})
    )
    assert reg is not None and reg.path == path and reg.owner == "isvc"
    assert reg.model_id.startswith("m__isvc-")
    key = json.loads(reg.key)
    assert key.get("storage_params") == params and key["storage_key"] == "k"


def test_uri_parameters_win_over_storage_parameters() -> None:
    body = inference_service(
        "m", "s3://real/p", model={"storage": {"parameters": {"bucket": "other", "region": "x"}}}
    )
    reg = plan(body)
    assert reg and json.loads(reg.key)["storage_params"] == {"bucket": "real", "region": "x", "type": "s3"}


def test_legacy_framework_spec() -> None:
    body = inference_service("m", None)
    body["spec"]["predictor"] = {"sklearn": {"storageUri": "s3://b/m.joblib"}}
    reg = plan(body)
    assert reg and reg.model_type == "sklearn" and reg.path == "s3://b/m.joblib"


def test_an_inference_service_not_handed_to_modelmesh_is_ignored() -> None:
    assert plan(inference_service("m", "s3://b/p", modelmesh=False)) is None
    serverless = inference_service(
        "m", "s3://b/p", modelmesh=False, annotations={"serving.kserve.io/deploymentMode": "Serverless"}
    )
    assert plan(serverless) is None


def _refused(body, kind=InvalidSpec):
    with pytest.raises(kind) as caught:
        plan(body)
    return caught.value


def test_no_storage_is_invalid_spec() -> None:
    refused = _refused(predictor("m", ""))
    assert refused.reason == "InvalidPredictorSpec" and refused.transition == "InvalidSpec"
    assert "no storage" in refused.message and refused.model_id.startswith("m__ksp-")
    assert "no storage" in _refused(inference_service("m", None)).message


def test_both_paths_are_invalid_spec() -> None:
    assert "Only one of spec.path" in _refused(predictor("m", "a", path="b")).message
    both = inference_service("m", "s3://b/p", model={"storage": {"path": "p"}})
    assert "both the storageUri and the storage.path" in _refused(both).message


def test_unknown_scheme_is_invalid_spec() -> None:
    assert "unsupported storageUri scheme 'ftp'" in _refused(inference_service("m", "ftp://h/p")).message
    assert "'hdfs'" in _refused(predictor("m", "hdfs://nn/p")).message


def test_model_and_framework_both_is_invalid_spec() -> None:
    body = inference_service("m", "s3://b/p")
    body["spec"]["predictor"]["sklearn"] = {"storageUri": "s3://b/p"}
    assert "both the model spec and a framework spec" in _refused(body).message


def test_model_type_no_pod_supports_is_no_supporting_runtime() -> None:
    refused = _refused(predictor("m", "/x", model_type="tensorflow"), NoSupportingRuntime)
    assert refused.reason == "NoSupportingRuntime" and "tensorflow" in refused.message
    assert _refused(inference_service("m", "s3://b/p", model_format="xgboost"), NoSupportingRuntime)


def test_runtimes() -> None:
    reg = plan(predictor("m", "/x", runtime={"name": "mlserver-1.x"}))
    assert reg and reg.model_type == "sklearn"
    refused = _refused(predictor("m", "/x", runtime={"name": "my-runtime"}), RuntimeNotRecognized)
    assert refused.reason == "RuntimeNotRecognized"
    assert _refused(predictor("m", "/x", runtime={"name": "triton-2.x"}), NoSupportingRuntime)


def test_resource_ref_and_kind() -> None:
    ref = ResourceRef.of(inference_service("m", "s3://b/p", namespace="ns"))
    assert ref == ResourceRef(Kind.INFERENCE_SERVICE, "ns", "m")
    assert Kind.PREDICTOR.resource == "predictors.v1alpha1.serving.kserve.io"
