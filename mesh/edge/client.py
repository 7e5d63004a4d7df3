"""A small blocking client for the CLI: ModelMesh management, admin, and v2 inference."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np

from adapters.datatypes import numpy_dtype, v2_datatype
from mesh.edge.converters import raw_bytes, unpack_bytes
from mesh_proto import grpc_service_pb2 as v2
from mesh_proto import grpc_service_pb2_grpc as v2_grpc
from mesh_proto import mesh_admin_pb2 as admin
from mesh_proto import mesh_admin_pb2_grpc as admin_grpc
from mesh_proto import model_mesh_pb2 as mm
from mesh_proto import model_mesh_pb2_grpc as mm_grpc


class MeshClient:
    def __init__(self, target: str, *, timeout_s: float = 60.0) -> None:
        self._channel = grpc.insecure_channel(target)
        self._timeout = timeout_s
        self.mm = mm_grpc.ModelMeshStub(self._channel)
        self.admin = admin_grpc.MeshAdminStub(self._channel)
        self.v2 = v2_grpc.GRPCInferenceServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> MeshClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def register(
        self,
        model_id: str,
        model_type: str,
        path: str,
        *,
        key: str = "",
        load_now: bool = False,
        sync: bool = False,
    ) -> mm.ModelStatusInfo:
        info = mm.ModelInfo(type=model_type, path=path, key=key)
        return self.mm.registerModel(
            mm.RegisterModelRequest(modelId=model_id, modelInfo=info, loadNow=load_now, sync=sync),
            timeout=self._timeout,
        )

    def unregister(self, model_id: str) -> None:
        self.mm.unregisterModel(mm.UnregisterModelRequest(modelId=model_id), timeout=self._timeout)

    def status(self, model_id: str) -> mm.ModelStatusInfo:
        return self.mm.getModelStatus(mm.GetStatusRequest(modelId=model_id), timeout=self._timeout)

    def describe(self, model_id: str) -> admin.ModelDetail:
        return self.admin.DescribeModel(admin.DescribeModelRequest(model_id=model_id), timeout=self._timeout)

    def set_tenant(
        self, tenant: str, *, max_models: int = 0, max_loaded_bytes: int = 0
    ) -> admin.TenantStatus:
        request = admin.SetTenantRequest(
            tenant=tenant, max_models=max_models, max_loaded_bytes=max_loaded_bytes
        )
        return self.admin.SetTenant(request, timeout=self._timeout)

    def clear_failures(self, model_id: str) -> admin.ClearFailuresResponse:
        request = admin.ClearFailuresRequest(model_id=model_id)
        return self.admin.ClearFailures(request, timeout=self._timeout)

    def tenants(self) -> admin.ListTenantsResponse:
        return self.admin.ListTenants(admin.ListTenantsRequest(), timeout=self._timeout)

    def list_models(self, prefix: str = "") -> admin.ListModelsResponse:
        """Every model and vmodel whose id starts with ``prefix``: all pages, in one answer."""
        listing = admin.ListModelsResponse()
        request = admin.ListModelsRequest(prefix=prefix)
        while True:
            page = self.admin.ListModels(request, timeout=self._timeout)
            listing.models.extend(page.models)
            listing.vmodels.extend(page.vmodels)
            if not page.next_page_token:
                return listing
            request.page_token = page.next_page_token

    def watch_models(self, prefix: str = "") -> Any:
        """The ``WatchModels`` stream: iterate it for ``admin.ModelChange`` messages (it has no
        deadline: it ends when the pod stops or ``cancel()`` is called on it)."""
        return self.admin.WatchModels(admin.WatchModelsRequest(prefix=prefix))

    def pod_status(self) -> admin.PodStatusResponse:
        return self.admin.PodStatus(admin.PodStatusRequest(), timeout=self._timeout)

    def fleet_status(self) -> admin.FleetStatusResponse:
        return self.admin.FleetStatus(admin.FleetStatusRequest(), timeout=self._timeout)

    def set_vmodel(self, vmodel_id: str, target: str, **fields: Any) -> mm.VModelStatusInfo:
        return self.mm.setVModel(
            mm.SetVModelRequest(vModelId=vmodel_id, targetModelId=target, **fields), timeout=self._timeout
        )

    def vmodel_status(self, vmodel_id: str) -> mm.VModelStatusInfo:
        return self.mm.getVModelStatus(mm.GetVModelStatusRequest(vModelId=vmodel_id), timeout=self._timeout)

    def delete_vmodel(self, vmodel_id: str) -> None:
        self.mm.deleteVModel(mm.DeleteVModelRequest(vModelId=vmodel_id), timeout=self._timeout)

    def infer(
        self, model: str, inputs: dict[str, np.ndarray], outputs: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        return decode_response(
            self.v2.ModelInfer(build_request(model, inputs, outputs), timeout=self._timeout)
        )


def build_request(
    model: str, inputs: dict[str, np.ndarray], outputs: list[str] | None = None
) -> v2.ModelInferRequest:
    request = v2.ModelInferRequest(model_name=model)
    for name, array in inputs.items():
        datatype = v2_datatype(array.dtype)
        request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        request.raw_input_contents.append(raw_bytes(array, datatype))
    for name in outputs or ():
        request.outputs.add(name=name)
    return request


def decode_response(response: v2.ModelInferResponse) -> dict[str, np.ndarray]:
    results: dict[str, np.ndarray] = {}
    for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        shape = tuple(tensor.shape)
        if tensor.datatype == "BYTES":
            count = int(np.prod(shape)) if shape else 1
            results[tensor.name] = unpack_bytes(tensor.name, raw, count).reshape(shape)
        else:
            results[tensor.name] = np.frombuffer(raw, dtype=numpy_dtype(tensor.datatype)).reshape(shape)
    return results
