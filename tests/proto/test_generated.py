"""The committed generated code matches the .proto sources and the wire contracts."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _regenerate_module():
    spec = importlib.util.spec_from_file_location("regenerate", ROOT / "proto" / "regenerate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["regenerate"] = module
    spec.loader.exec_module(module)
    return module


def test_committed_code_is_fresh() -> None:
    assert _regenerate_module().stale_files() == []


def test_stale_code_is_detected(tmp_path, monkeypatch) -> None:
    regenerate = _regenerate_module()
    copy = tmp_path / "proto"
    (copy / "mesh_proto").mkdir(parents=True)
    for path in (ROOT / "proto" / "mesh_proto").iterdir():
        if path.is_file():
            (copy / "mesh_proto" / path.name).write_bytes(path.read_bytes())
    edited = copy / "mesh_proto" / "mesh_admin.proto"
    edited.write_text(edited.read_text().replace("string prefix = 1;", "string prefix = 1;\n  bool all = 9;"))
    monkeypatch.setattr(regenerate, "PROTO_ROOT", copy)
    assert regenerate.stale_files() == ["mesh_admin_pb2.py", "mesh_admin_pb2.pyi"]


def test_field_numbers_match_the_stock_clients() -> None:
    """Our v2 messages agree field for field with tritonclient's own descriptors."""
    from tritonclient.grpc import service_pb2 as triton

    from mesh_proto import grpc_service_pb2 as ours

    def fields(descriptor) -> set[tuple[str, str, int, int]]:
        found = set()
        for field in descriptor.fields:
            found.add((descriptor.full_name, field.name, field.number, field.type))
        for nested in descriptor.nested_types:
            found |= fields(nested)
        return found

    for name, descriptor in ours.DESCRIPTOR.message_types_by_name.items():
        assert fields(descriptor) == fields(triton.DESCRIPTOR.message_types_by_name[name]), name
    methods = ours.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods
    stock = triton.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for method in methods:
        assert stock.methods_by_name[method.name].input_type.full_name == method.input_type.full_name
