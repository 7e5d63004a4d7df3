"""The controller's client of a pod's public gRPC APIs (``mmesh.ModelMesh``, ``mesh.v1.MeshAdmin``).

The controller's transport: it converts registrations to requests, the ``WatchModels`` stream to
``Change`` values, and gRPC errors to the mesh's error tree, so the reconciler sees neither gRPC
nor protobuf. Codes: ``UNAVAILABLE``/``DEADLINE_EXCEEDED`` -> ``Unavailable`` (retry, the mesh may
come back), ``INVALID_ARGUMENT`` -> ``InvalidSpec`` (the registration as written is refused),
``ALREADY_EXISTS`` -> ``AlreadyExists`` (another owner holds the vmodel), others -> ``MeshError``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

import grpc

from mesh.k8s.resources import Registration
from mesh.k8s.status import LoadFailureView, ModelView, VModelView
from mesh_common.errors import AlreadyExists, InvalidSpec, MeshError, Unavailable
from mesh_proto import mesh_admin_pb2 as admin
from mesh_proto import mesh_admin_pb2_grpc as admin_grpc
from mesh_proto import model_mesh_pb2 as mm
from mesh_proto import model_mesh_pb2_grpc as mm_grpc


@dataclass(frozen=True)
class Change:
    """One message of the watch: exactly one field is set."""

    model: ModelView | None = None
    vmodel: VModelView | None = None
    deleted_model_id: str = ""
    deleted_vmodel_id: str = ""
    synced: bool = False


class MeshApi(Protocol):
    """What the reconciler needs from the mesh."""

    async def set_vmodel(self, registration: Registration, *, load_now: bool) -> None: ...

    async def delete_vmodel(self, vmodel_id: str, *, owner: str) -> None: ...

    def watch(self, prefix: str) -> AsyncIterator[Change]: ...

    async def close(self) -> None: ...


class GrpcMeshApi:
    """``MeshApi`` over one channel to ``target`` (the chart's client Service: any pod answers)."""

    def __init__(self, target: str, *, timeout_s: float = 10.0) -> None:
        self.target = target
        self._channel = grpc.aio.insecure_channel(target)
        self._mm = mm_grpc.ModelMeshStub(self._channel)
        self._admin = admin_grpc.MeshAdminStub(self._channel)
        self._timeout_s = timeout_s

    async def set_vmodel(self, registration: Registration, *, load_now: bool) -> None:
        info = mm.ModelInfo(type=registration.model_type, path=registration.path, key=registration.key)
        request = mm.SetVModelRequest(
            vModelId=registration.vmodel_id,
            owner=registration.owner,
            targetModelId=registration.model_id,
            modelInfo=info,
            autoDeleteTargetModel=True,
            loadNow=load_now,
        )
        try:
            await self._mm.setVModel(request, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise _mesh_error(exc, registration.model_id) from None

    async def delete_vmodel(self, vmodel_id: str, *, owner: str) -> None:
        request = mm.DeleteVModelRequest(vModelId=vmodel_id, owner=owner)
        try:
            await self._mm.deleteVModel(request, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise _mesh_error(exc, vmodel_id) from None

    async def watch(self, prefix: str) -> AsyncIterator[Change]:
        """The changes, first the snapshot then ``synced``; ``Unavailable`` when the stream breaks."""
        call = self._admin.WatchModels(admin.WatchModelsRequest(prefix=prefix))
        try:
            async for message in call:
                yield change_from_proto(message)
        except grpc.aio.AioRpcError as exc:
            raise _mesh_error(exc, "") from None
        finally:
            call.cancel()
        raise Unavailable(f"the watch stream from {self.target} ended")

    async def close(self) -> None:
        await self._channel.close()


def change_from_proto(message: admin.ModelChange) -> Change:
    if message.HasField("model"):
        m = message.model
        failures = tuple(LoadFailureView(f.pod_id, f.reason, f.time_ms) for f in m.failures)
        view = ModelView(
            model_id=m.model_id,
            status=m.status,
            loaded_copies=m.loaded_copies,
            loading_copies=m.loading_copies,
            failed_copies=m.failed_copies,
            failures=failures,
            blocked=m.blocked,
        )
        return Change(model=view)
    if message.HasField("vmodel"):
        v = message.vmodel
        return Change(vmodel=VModelView(v.vmodel_id, v.active_model_id, v.target_model_id, v.owner))
    if message.deleted_model_id:
        return Change(deleted_model_id=message.deleted_model_id)
    if message.deleted_vmodel_id:
        return Change(deleted_vmodel_id=message.deleted_vmodel_id)
    return Change(synced=message.synced)


_RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.CANCELLED,
}


def _mesh_error(exc: grpc.aio.AioRpcError, model_id: str) -> MeshError:
    code = exc.code()
    details = exc.details() or code.name
    if code in _RETRYABLE:
        return Unavailable(f"the mesh did not answer ({code.name}): {details}")
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidSpec(details, model_id=model_id)
    if code is grpc.StatusCode.ALREADY_EXISTS:
        return AlreadyExists(details, model_id=model_id)
    return MeshError(f"{code.name}: {details}", model_id=model_id)
