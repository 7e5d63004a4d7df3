"""Generated sequences of ModelMesh management calls against a real pod: refusals, never faults.

Hypothesis draws calls to ``registerModel``, ``unregisterModel``, ``getModelStatus``,
``ensureLoaded``, ``setVModel``, ``deleteVModel`` and ``getVModelStatus`` over a few ids
(empty, very long, with a slash or a non-ASCII letter among them), with model infos that
are right or wrong in type, path (missing, corrupt, empty directory, unknown URI schemes)
and storage key JSON, interleaved with inference calls. Every call is answered or refused
with a status a client can act on, every vmodel's active model stays registered, and the
pod still loads and serves a good model at the end. Examples are the same on every run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mesh_proto import grpc_service_pb2 as v2
from mesh_proto import grpc_service_pb2_grpc as v2_grpc
from mesh_proto import model_mesh_pb2 as mm
from tests.conftest import ModelSet

ANSWERS = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
IDS = ["a", "b", "v", "w", "", "a/b", "x" * 300, "\u00fc"]
OWNERS = ["", "team-1", "team-2"]


@pytest.fixture
def paths(models: ModelSet, tmp_path: Path) -> list[str]:
    (tmp_path / "corrupt.joblib").write_bytes(b"not a pickle")
    (tmp_path / "corrupt.onnx").write_bytes(b"\x08\x01garbage")
    (tmp_path / "empty").mkdir()
    good = [str(models.sklearn), str(models.onnx), str(models.pytorch), f"file://{models.sklearn}"]
    broken = ["corrupt.joblib", "corrupt.onnx", "empty", "missing"]
    odd = ["", "s3://", "gs://bucket", "ftp://host/model", "file://", "relative/path", "/"]
    return good + [str(tmp_path / name) for name in broken] + odd


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
        ]
    )
    types = st.sampled_from(["sklearn", "onnx", "pytorch", "", "tensorflow", "SKLEARN"])
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
        st.tuples(st.just("infer"), ids),
    )


def _infer_request(name: str) -> v2.ModelInferRequest:
    request = v2.ModelInferRequest(model_name=name, raw_input_contents=[np.ones((1, 4)).tobytes()])
    request.inputs.add(name="x", datatype="FP64", shape=[1, 4])
    return request


def test_generated_management_calls_are_answered_and_leave_the_registry_whole(
    mesh_api, channel: grpc.Channel, paths: list[str], models: ModelSet
) -> None:
    inference = v2_grpc.GRPCInferenceServiceStub(channel)
    good = mm.ModelInfo(type="sklearn", path=str(models.sklearn))
    good_start = [
        ("registerModel", mm.RegisterModelRequest(modelId="a", modelInfo=good, loadNow=True, sync=True)),
        ("ensureLoaded", mm.EnsureLoadedRequest(modelId="a", sync=True)),
        ("infer", "a"),
    ]
    seen: set[tuple[str, str]] = set()

    def send(method: str, request: Any) -> None:
        try:
            if method == "infer":
                inference.ModelInfer(_infer_request(request), timeout=30)
            else:
                getattr(mesh_api, method)(request, timeout=30)
            code = grpc.StatusCode.OK
        except grpc.RpcError as error:
            code = error.code()
            assert error.details(), (method, request)
        assert code in ANSWERS, (method, code, request)
        seen.add((method, code.name))

    @settings(
        max_examples=120,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(st.lists(calls(paths), min_size=1, max_size=8))
    @example(good_start)  # runs first, on an empty registry, whatever the generated sequences reach
    def sequence(steps: list[tuple[str, Any]]) -> None:
        for method, request in steps:
            send(method, request)
        for vmodel_id in IDS:  # a vmodel's active model is never left unregistered
            for owner in OWNERS:
                request = mm.GetVModelStatusRequest(vModelId=vmodel_id, owner=owner)
                try:
                    status = mesh_api.getVModelStatus(request, timeout=30)
                except grpc.RpcError as error:
                    assert error.code() in ANSWERS, (vmodel_id, owner, error.code())
                    continue
                if status.status != mm.VModelStatusInfo.NOT_FOUND:
                    active_request = mm.GetStatusRequest(modelId=status.activeModelId)
                    active = mesh_api.getModelStatus(active_request, timeout=30)
                    assert active.status != mm.ModelStatusInfo.NOT_FOUND, (vmodel_id, status)

    sequence()
    # Each outcome of a good sequence was seen (the pinned example makes sure of it).
    assert {("registerModel", "OK"), ("ensureLoaded", "OK"), ("infer", "OK")} <= seen, sorted(seen)
    mesh_api.registerModel(
        mm.RegisterModelRequest(modelId="last", modelInfo=good, loadNow=True, sync=True), timeout=60
    )
    assert inference.ModelInfer(_infer_request("last"), timeout=30).outputs
