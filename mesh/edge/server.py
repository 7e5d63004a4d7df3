"""Builds the pod's one grpc.aio server: data plane, ModelMesh API, admin, health, reflection."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mesh.edge.inference import InferenceServicer
from mesh.edge.management import MeshAdminServicer, ModelMeshServicer
from mesh_proto import grpc_service_pb2, mesh_admin_pb2, model_mesh_pb2
from mesh_proto import grpc_service_pb2_grpc as v2_grpc
from mesh_proto import mesh_admin_pb2_grpc as admin_grpc
from mesh_proto import model_mesh_pb2_grpc as mm_grpc
from mesh_proto.pool import POOL

SERVICE_NAMES = (
    grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
    model_mesh_pb2.DESCRIPTOR.services_by_name["ModelMesh"].full_name,
    mesh_admin_pb2.DESCRIPTOR.services_by_name["MeshAdmin"].full_name,
)


def build_server(
    *,
    inference: InferenceServicer,
    modelmesh: ModelMeshServicer,
    admin: MeshAdminServicer,
    health_servicer: health.aio.HealthServicer,
    max_message_bytes: int,
) -> grpc.aio.Server:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
    )
    v2_grpc.add_GRPCInferenceServiceServicer_to_server(inference, server)
    mm_grpc.add_ModelMeshServicer_to_server(modelmesh, server)
    admin_grpc.add_MeshAdminServicer_to_server(admin, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    _register_in_pool(health_pb2.DESCRIPTOR.serialized_pb)
    names = (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server, pool=POOL)
    return server


def _register_in_pool(serialized_file: bytes) -> None:
    """Make a default-pool file visible to reflection through our pool (once)."""
    from google.protobuf import descriptor_pb2

    proto = descriptor_pb2.FileDescriptorProto.FromString(serialized_file)
    try:
        POOL.FindFileByName(proto.name)
    except KeyError:
        POOL.Add(proto)
