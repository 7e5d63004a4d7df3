"""``ListModels`` answers a page at a time, so a fleet's listing never outgrows what a client accepts."""

from __future__ import annotations

import grpc
import pytest

from mesh.edge.client import MeshClient
from mesh_proto import mesh_admin_pb2 as admin
from mesh_proto import mesh_admin_pb2_grpc as admin_grpc
from mesh_proto import model_mesh_pb2 as mm
from tests.conftest import PodThread, register

MB = 2**20


def test_list_models_pages_a_listing_larger_than_a_client_accepts(
    pod: PodThread, channel: grpc.Channel, mesh_api
) -> None:
    """1,100 models with 4 KiB paths list as 4.5 MB: more than a stock client's 4 MiB."""
    count = 1100
    ids = [f"m{i:04d}" for i in range(count)]
    for model_id in ids:
        register(mesh_api, model_id, "sklearn", "/models/" + "p" * 4000)
    mesh_api.setVModel(mm.SetVModelRequest(vModelId="v", targetModelId="m0007"), timeout=30)
    listing = admin_grpc.MeshAdminStub(channel)
    seen: list[str] = []
    request = admin.ListModelsRequest()
    pages = 0
    while True:
        page = listing.ListModels(request, timeout=60)
        assert page.ByteSize() <= 3 * MB + 4096
        seen += [m.model_id for m in page.models] + [f"vmodel {v.vmodel_id}" for v in page.vmodels]
        pages += 1
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    assert pages == 2 and seen == [*ids, "vmodel v"]

    small = listing.ListModels(admin.ListModelsRequest(prefix="m01", page_size=7), timeout=30)
    assert [m.model_id for m in small.models] == [f"m{i:04d}" for i in range(100, 107)]
    rest = listing.ListModels(
        admin.ListModelsRequest(prefix="m01", page_size=1000, page_token=small.next_page_token), timeout=30
    )
    assert [m.model_id for m in rest.models] == [f"m{i:04d}" for i in range(107, 200)]
    assert not rest.vmodels and not rest.next_page_token

    with MeshClient(pod.target) as client:
        everything = client.list_models()
    assert [m.model_id for m in everything.models] == ids and [v.vmodel_id for v in everything.vmodels] == [
        "v"
    ]

    with pytest.raises(grpc.RpcError) as info:
        listing.ListModels(admin.ListModelsRequest(page_token="not a token"), timeout=30)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
