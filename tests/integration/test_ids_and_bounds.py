"""Ids, paths and model keys at their bounds: any printable id travels between pods, and input
past a bound is refused with INVALID_ARGUMENT that quotes it cut short.

The fleet tests run two pods on the real etcd; the second pod has no room for any model, so every
call entering it is served by the first one: through the pod-to-pod hop.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc

from mesh.edge.client import MeshClient
from mesh_proto import grpc_service_pb2 as v2
from mesh_proto import grpc_service_pb2_grpc as v2_grpc
from mesh_proto import model_mesh_pb2 as mm
from mesh_tools.etcd_process import EtcdProcess
from tests.conftest import ModelSet, PodThread, pod_settings, register, wait_until

MB = 2**20
TRAILER_LIMIT = 8192
"""What a stock client accepts of a status message, percent-encoded, before "Stream removed"."""
IDS = ["模型", "naïve", " padded id ", "emoji-🙂", "plain"]


def _x() -> tc.InferInput:
    tensor = tc.InferInput("input-0", [1, 4], "FP64")
    tensor.set_data_from_numpy(np.zeros((1, 4)))
    return tensor


def _refused(call: object, *args: object, **kwargs: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)  # type: ignore[operator]
    return info.value


@pytest.fixture
def two_pods(etcd: EtcdProcess) -> Iterator[tuple[PodThread, PodThread]]:
    """Pod ``a`` on the etcd fixture, and pod ``b`` beside it with no room for any model."""
    namespace = f"ids-{uuid.uuid4().hex[:8]}"
    common = {"etcd": etcd.endpoint, "namespace": namespace, "publish_interval_s": 0.1}
    with (
        PodThread(pod_settings(pod_id="a", **common)) as a,
        PodThread(pod_settings(pod_id="b", capacity_bytes=1024, **common)) as b,
    ):
        with MeshClient(b.target) as client:
            wait_until(lambda: len(client.fleet_status().pods) == 2, within_s=20, what="b seeing a")
        yield a, b


def test_any_printable_id_is_served_through_another_pod(
    two_pods: tuple[PodThread, PodThread], models: ModelSet
) -> None:
    a, b = two_pods
    with MeshClient(a.target) as through_a, MeshClient(b.target) as through_b:
        triton = tc.InferenceServerClient(b.target)
        try:
            for model_id in IDS:
                through_a.register(model_id, "sklearn", str(models.sklearn))
                loaded = through_b.mm.ensureLoaded(
                    mm.EnsureLoadedRequest(modelId=model_id, sync=True), timeout=60
                )
                assert loaded.status == mm.ModelStatusInfo.LOADED, (model_id, loaded)
                # b has no room: its attempt (if placement tried it first) failed, a holds the copy.
                held = [
                    c.location for c in loaded.modelCopyInfos if c.copyStatus == mm.ModelStatusInfo.LOADED
                ]
                assert held == ["a"], loaded
                answer = triton.infer(model_id, [_x()], client_timeout=30)
                assert answer.get_response().model_name == model_id
                assert answer.as_numpy("predict").shape == (1,)
                assert through_b.status(model_id).status == mm.ModelStatusInfo.LOADED

            # The id in routing metadata (UTF-8 in the -bin form) names the model too.
            request = v2.ModelInferRequest(
                model_name="ignored", raw_input_contents=[np.zeros((1, 4)).tobytes()]
            )
            request.inputs.add(name="input-0", datatype="FP64", shape=[1, 4])
            routed = (("mm-model-id-bin", "模型".encode()),)
            assert through_b.v2.ModelInfer(request, metadata=routed, timeout=30).outputs

            vmodel = mm.SetVModelRequest(vModelId="生产", targetModelId="naïve", sync=True)
            status = through_b.mm.setVModel(vmodel, timeout=60)
            assert (status.status, status.activeModelId) == (mm.VModelStatusInfo.DEFINED, "naïve"), status
            assert triton.infer("生产", [_x()], client_timeout=30).get_response().model_name == "生产"

            # Unloading through b reaches a's copy over the hop.
            triton.unload_model("模型", client_timeout=30)
            assert through_a.status("模型").status == mm.ModelStatusInfo.NOT_LOADED
        finally:
            triton.close()


@pytest.mark.parametrize(
    ("model_id", "reason"),
    [
        ("x" * MB, "modelId is 1048576 bytes of UTF-8; at most 512 are allowed"),
        ("模" * 171, "modelId is 513 bytes of UTF-8; at most 512 are allowed"),
        ("line\nbreak", "holds U+000A, which is not printable"),
        ("nul\x00", "holds U+0000, which is not printable"),
        ("zero\u200bwidth", "ZERO WIDTH SPACE, which is not printable"),
    ],
)
def test_ids_past_their_bounds_are_refused(mesh_api, models: ModelSet, model_id: str, reason: str) -> None:
    error = _refused(register, mesh_api, model_id, "sklearn", models.sklearn)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, error
    assert reason in error.details()
    assert len(error.details()) < 1000


@pytest.mark.parametrize(
    ("path", "key", "reason"),
    [
        ("/m/" + "p" * 5000, "", "modelInfo.path is 5003 bytes of UTF-8; at most 4096 are allowed"),
        ("http://[::1", "", "'http://[::1' is not a valid URI: Invalid IPv6 URL"),
        ("/models/a\nb", "", "holds a control character"),
        (
            None,
            json.dumps({"storage_key": "x" * 20_000}),
            "modelInfo.key is 20019 bytes of UTF-8; at most 16384",
        ),
        (None, "[" * 5000 + "]" * 5000, "modelInfo.key is nested deeper than 32 levels"),
        (None, '{"a":' * 33 + "1" + "}" * 33, "modelInfo.key is nested deeper than 32 levels"),
        (None, '{"a": ' + "1" * 5000 + "}", "modelInfo.key is not JSON: Exceeds the limit (4300 digits)"),
    ],
)
def test_paths_and_keys_past_their_bounds_are_refused(
    mesh_api, models: ModelSet, path: str | None, key: str, reason: str
) -> None:
    error = _refused(register, mesh_api, "m", "sklearn", path or models.sklearn, key=key)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, error
    assert reason in error.details()


def test_an_oversized_key_is_refused_without_echoing_it(mesh_api, models: ModelSet) -> None:
    key = json.dumps({"secret_access_key": "wJalrXUtnFEMI/K7MDENG", "pad": "p" * 20_000})
    error = _refused(register, mesh_api, "m", "sklearn", models.sklearn, key=key)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 16384" in error.details() and "wJalrXUtnFEMI" not in error.details()


@pytest.mark.parametrize(
    "path",
    [
        "https://admin:hunter2-token@models.example/m.joblib",
        "s3://AKIAEXAMPLE:hunter2-token@bucket/m.joblib",
        "https://admin:hunter2-token@models.example/m\n.joblib",
        "https://admin:hunter2-token@[::1/m.joblib",
    ],
)
def test_a_path_carrying_credentials_is_refused_without_echoing_them(
    mesh_api, models: ModelSet, path: str
) -> None:
    error = _refused(register, mesh_api, "m", "sklearn", path)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, error
    assert "hunter2" not in error.details() and "***@" in error.details(), error.details()


def test_a_key_at_its_bounds_registers(mesh_api, models: ModelSet) -> None:
    key = {"storage_params": {"deep": json.loads('{"a":' * 29 + "1" + "}" * 29)}, "pad": "p" * 15_000}
    status = register(mesh_api, "m", "sklearn", models.sklearn, key=json.dumps(key))
    assert status.status == mm.ModelStatusInfo.NOT_LOADED


def test_messages_quote_what_the_caller_sent_cut_short(
    mesh_api, channel: grpc.Channel, models: ModelSet
) -> None:
    """A megabyte of name or type comes back as the real refusal, not "Stream removed"."""
    inference = v2_grpc.GRPCInferenceServiceStub(channel)
    huge = "模" * MB
    checks = [
        (
            lambda: inference.ModelInfer(v2.ModelInferRequest(model_name=huge), timeout=30),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            lambda: register(mesh_api, "m", "x" * MB, models.sklearn),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            lambda: mesh_api.setVModel(mm.SetVModelRequest(vModelId="v", targetModelId=huge), timeout=30),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            lambda: mesh_api.ensureLoaded(mm.EnsureLoadedRequest(modelId=huge), timeout=30),
            grpc.StatusCode.NOT_FOUND,
        ),
    ]
    for call, code in checks:
        error = _refused(call)
        assert error.code() is code, (error.code(), error.details()[:200])
        assert f"... ({MB} characters)" in error.details()
        assert len(error.details().encode()) < TRAILER_LIMIT


@pytest.mark.parametrize("key", ["mm-model-id-bin", "mm-vmodel-id-bin"])
def test_routing_metadata_that_is_not_utf8_is_invalid_argument(channel: grpc.Channel, key: str) -> None:
    inference = v2_grpc.GRPCInferenceServiceStub(channel)
    metadata = ((key, b"\xff\xfe"),)
    for call, request in [
        (inference.ModelInfer, v2.ModelInferRequest(model_name="m")),
        (inference.ModelReady, v2.ModelReadyRequest(name="m")),
    ]:
        error = _refused(call, request, metadata=metadata, timeout=30)
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, error
        assert f"metadata {key} is not UTF-8 text" in error.details()
