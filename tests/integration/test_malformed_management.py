"""Generated sequences of ModelMesh management calls against a real pod: refusals, never faults.

Hypothesis draws calls to ``registerModel``, ``unregisterModel``, ``getModelStatus``,
``ensureLoaded``, ``setVModel``, ``deleteVModel`` and ``getVModelStatus`` over a few ids
(empty, long, a megabyte long, with a slash, a newline, a NUL or non-ASCII letters among
them), with model infos that are right or wrong in type, path (missing, corrupt, empty
directory, unknown URI schemes, unparseable URIs, past the length bound) and storage key JSON
(not an object, nested thousands of levels deep, past the length bound and past etcd's value
limit), interleaved with inference calls that name the model in ``model_name`` or in routing
metadata (UTF-8 or not). Every call is answered or refused with a status a client can act on,
never a transport's "Stream removed"; every vmodel's active model stays registered, and the
pod still loads and serves a good model at the end. It runs on one pod, and on two pods over
etcd where the second has no room, so that its calls are served by the first over the
pod-to-pod hop. Examples are the same on every run.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mesh.edge.client import MeshClient
from mesh_proto import grpc_service_pb2 as v2
from mesh_proto import grpc_service_pb2_grpc as v2_grpc
from mesh_proto import model_mesh_pb2 as mm
from mesh_proto import model_mesh_pb2_grpc as mm_grpc
from mesh_tools.etcd_process import EtcdProcess
from tests.conftest import ModelSet, PodThread, pod_settings, wait_until

ANSWERS = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
RACING = {grpc.StatusCode.UNAVAILABLE}
"""Also an answer on a fleet: a call racing a load or a registry write on another pod may be told
to retry. Never for ``registerModel``, whose refusals do not depend on other pods."""
HUGE = "y" * 2**20
IDS = ["a", "b", "v", "w", "", "a/b", "x" * 300, "\u00fc", "模型", "naïve", "a\nb", "nul\x00", "x" * 600]
IDS.append(HUGE)
OWNERS = ["", "team-1", "team-2", "o" * 600, "team\n"]


@pytest.fixture
def paths(models: ModelSet, tmp_path: Path) -> list[str]:
    (tmp_path / "corrupt.joblib").write_bytes(b"not a pickle")
    (tmp_path / "corrupt.onnx").write_bytes(b"\x08\x01garbage")
    (tmp_path / "empty").mkdir()
    good = [str(models.sklearn), str(models.onnx), str(models.pytorch), f"file://{models.sklearn}"]
    broken = ["corrupt.joblib", "corrupt.onnx", "empty", "missing"]
    odd = ["", "s3://", "gs://bucket", "ftp://host/model", "file://", "relative/path", "/", "http://[::1"]
    odd += ["pvc://[claim", "/models/a\nb", "/" + "p" * 5000, "/" + "p" * (1400 * 1024)]
    return good + [str(tmp_path / name) for name in broken] + odd


routing = st.sampled_from(
    [
        (),
        (("mm-model-id-bin", "模型".encode()),),
        (("mm-vmodel-id-bin", "naïve".encode()),),
        (("mm-model-id-bin", b"\xff\xfe"),),
        (("mm-vmodel-id-bin", b"\x80"),),
        (("mm-model-id", "a"),),
    ]
)


def calls(paths: list[str]) -> st.SearchStrategy[tuple[str, Any]]:
    ids = st.sampled_from(IDS)
    owners = st.sampled_from(OWNERS)
    vmodels = st.builds(mm.GetVModelStatusRequest, vModelId=ids, owner=owners)
    # JSON that parses but is not a key object comes first: hypothesis draws early entries more often.
    keys = st.sampled_from(
        [
            "",
            "[]",
            "3",
            "null",
            '"text"',
            json.dumps({"storage_key": 3, "storage_params": "bucket"}),
            "not json",
            "{}",
            json.dumps({"storage_key": "store"}),
            json.dumps({"storage_params": {"bucket": "b"}}),
            "[" * 5000 + "]" * 5000,
            '{"a":' * 40 + "1" + "}" * 40,
            json.dumps({"storage_key": "store", "pad": "p" * 20_000}),
            json.dumps({"storage_key": "store", "pad": "p" * (2 * 2**20)}),  # past etcd's value limit
        ]
    )
    types = st.sampled_from(["sklearn", "onnx", "pytorch", "", "tensorflow", "SKLEARN", "t" * 2**20])
    infos = st.builds(mm.ModelInfo, type=types, path=st.sampled_from(paths), key=keys)
    flags = st.booleans()
    return st.one_of(
        st.tuples(
            st.just("registerModel"),
            st.builds(mm.RegisterModelRequest, modelId=ids, modelInfo=infos, loadNow=flags, sync=flags),
        ),
        st.tuples(st.just("unregisterModel"), st.builds(mm.UnregisterModelRequest, modelId=ids)),
        st.tuples(st.just("getModelStatus"), st.builds(mm.GetStatusRequest, modelId=ids)),
        st.tuples(st.just("ensureLoaded"), st.builds(mm.EnsureLoadedRequest, modelId=ids, sync=flags)),
        st.tuples(
            st.just("setVModel"),
            st.builds(
                mm.SetVModelRequest,
                vModelId=ids,
                owner=owners,
                targetModelId=ids,
                updateOnly=flags,
                modelInfo=st.one_of(st.none(), infos),
                autoDeleteTargetModel=flags,
                loadNow=flags,
                force=flags,
                sync=flags,
                expectedTargetModelId=st.sampled_from(["", "a", "b"]),
            ),
        ),
        st.tuples(st.just("deleteVModel"), st.builds(mm.DeleteVModelRequest, vModelId=ids, owner=owners)),
        st.tuples(st.just("getVModelStatus"), vmodels),
        st.tuples(st.just("infer"), st.tuples(ids, routing)),
    )


def _infer_request(name: str) -> v2.ModelInferRequest:
    request = v2.ModelInferRequest(model_name=name, raw_input_contents=[np.ones((1, 4)).tobytes()])
    request.inputs.add(name="x", datatype="FP64", shape=[1, 4])
    return request


@pytest.fixture(params=["one pod", "two pods"])
def entries(request: pytest.FixtureRequest) -> Iterator[list[grpc.Channel]]:
    """Channels to the pods calls enter by: one pod twice, or two pods on etcd of which the
    second has no room, so that what it serves, the first serves for it over the hop."""
    if request.param == "one pod":
        channel = request.getfixturevalue("channel")
        yield [channel, channel]
        return
    etcd: EtcdProcess = request.getfixturevalue("etcd")
    common = {"etcd": etcd.endpoint, "namespace": f"fuzz-{uuid.uuid4().hex[:8]}", "publish_interval_s": 0.1}
    with (
        PodThread(pod_settings(pod_id="a", **common)) as a,
        PodThread(pod_settings(pod_id="b", capacity_bytes=1024, **common)) as b,
        grpc.insecure_channel(a.target) as to_a,
        grpc.insecure_channel(b.target) as to_b,
        MeshClient(b.target) as client,
    ):
        wait_until(lambda: len(client.fleet_status().pods) == 2, within_s=20, what="b seeing a")
        yield [to_a, to_b]


def test_generated_management_calls_are_answered_and_leave_the_registry_whole(
    entries: list[grpc.Channel], paths: list[str], models: ModelSet
) -> None:
    apis = [mm_grpc.ModelMeshStub(channel) for channel in entries]
    inferences = [v2_grpc.GRPCInferenceServiceStub(channel) for channel in entries]
    mesh_api = apis[0]
    answers = ANSWERS | (RACING if entries[0] is not entries[1] else set())
    good = mm.ModelInfo(type="sklearn", path=str(models.sklearn))
    good_start = [
        (("registerModel", mm.RegisterModelRequest(modelId="a", modelInfo=good, loadNow=True, sync=True)), 0),
        (("ensureLoaded", mm.EnsureLoadedRequest(modelId="a", sync=True)), 1),
        (("infer", ("a", ())), 1),
    ]
    # What once came back INTERNAL (or as "Stream removed", or "registry unreachable"), and the
    # non-ASCII ids served over the hop when the calls enter the second pod.
    deep = mm.ModelInfo(type="sklearn", path=str(models.sklearn), key="[" * 5000 + "]" * 5000)
    unparseable = mm.ModelInfo(type="sklearn", path="http://[::1")
    oversized_key = mm.ModelInfo(type="sklearn", path=str(models.sklearn), key=json.dumps({"p": "p" * 2**21}))
    reported = [
        (("registerModel", mm.RegisterModelRequest(modelId="模型", modelInfo=good)), 0),
        (("ensureLoaded", mm.EnsureLoadedRequest(modelId="模型", sync=True)), 1),
        (("infer", ("模型", ())), 1),
        (("setVModel", mm.SetVModelRequest(vModelId="naïve", targetModelId="模型", sync=True)), 1),
        (("infer", ("ignored", (("mm-vmodel-id-bin", "naïve".encode()),))), 1),
        (("infer", ("a", (("mm-model-id-bin", b"\xff\xfe"),))), 1),
        (("registerModel", mm.RegisterModelRequest(modelId="d", modelInfo=deep)), 0),
        (("registerModel", mm.RegisterModelRequest(modelId="u", modelInfo=unparseable)), 0),
        (("registerModel", mm.RegisterModelRequest(modelId="k", modelInfo=oversized_key)), 0),
        (("registerModel", mm.RegisterModelRequest(modelId=HUGE, modelInfo=good)), 1),
        (("registerModel", mm.RegisterModelRequest(modelId="a\nb", modelInfo=good)), 1),
        (("deleteVModel", mm.DeleteVModelRequest(vModelId="naïve")), 0),
    ]
    seen: set[tuple[str, str]] = set()

    def send(method: str, request: Any, entry: int) -> None:
        try:
            if method == "infer":
                name, metadata = request
                inferences[entry].ModelInfer(_infer_request(name), metadata=metadata, timeout=30)
            else:
                getattr(apis[entry], method)(request, timeout=30)
            code = grpc.StatusCode.OK
        except grpc.RpcError as error:
            code = error.code()
            assert error.details(), (method, request)
            assert "Stream removed" not in error.details(), (method, code, error.details()[:300])
        allowed = ANSWERS if method == "registerModel" else answers
        assert code in allowed, (method, code, str(request)[:300])
        seen.add((method, code.name))

    @settings(
        max_examples=120,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(st.lists(st.tuples(calls(paths), st.integers(0, 1)), min_size=1, max_size=8))
    @example(good_start)  # runs first, on an empty registry, whatever the generated sequences reach
    @example(reported)
    def sequence(steps: list[tuple[tuple[str, Any], int]]) -> None:
        for (method, request), entry in steps:
            send(method, request, entry)
        for vmodel_id in [i for i in IDS if i is not HUGE]:  # a vmodel's active model stays registered
            for owner in OWNERS:
                request = mm.GetVModelStatusRequest(vModelId=vmodel_id, owner=owner)
                try:
                    status = mesh_api.getVModelStatus(request, timeout=30)
                except grpc.RpcError as error:
                    assert error.code() in answers, (vmodel_id, owner, error.code())
                    continue
                if status.status != mm.VModelStatusInfo.NOT_FOUND:
                    active_request = mm.GetStatusRequest(modelId=status.activeModelId)
                    active = mesh_api.getModelStatus(active_request, timeout=30)
                    assert active.status != mm.ModelStatusInfo.NOT_FOUND, (vmodel_id, status)

    sequence()
    # Each outcome of a good sequence was seen (the pinned example makes sure of it).
    assert {("registerModel", "OK"), ("ensureLoaded", "OK"), ("infer", "OK")} <= seen, sorted(seen)
    assert {("registerModel", "INVALID_ARGUMENT"), ("setVModel", "OK"), ("infer", "INVALID_ARGUMENT")} <= seen
    mesh_api.registerModel(
        mm.RegisterModelRequest(modelId="last", modelInfo=good, loadNow=True, sync=True), timeout=60
    )
    assert inferences[1].ModelInfer(_infer_request("last"), timeout=30).outputs
