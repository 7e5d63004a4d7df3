"""The pod freezes its long-lived heap so full collections do not stop the event loop for long."""

from __future__ import annotations

import gc
import sys
import types

import grpc
import pytest

from mesh.heap import HeapFreezer
from mesh_proto import model_mesh_pb2_grpc as mm_grpc
from tests.conftest import ModelSet, PodThread, pod_settings, register


def walked(obj: object) -> bool:
    """Whether the garbage collector still walks ``obj`` (frozen objects are left out)."""
    return any(o is obj for o in gc.get_objects())


def test_the_heap_freezes_when_modules_were_imported_since_the_last_freeze(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    freezer = HeapFreezer()
    assert freezer.settle()
    kept = [object()]
    assert not freezer.settle()  # nothing imported: calls in flight are not frozen
    assert walked(kept)

    monkeypatch.setitem(sys.modules, "mesh_heap_test_module", types.ModuleType("mesh_heap_test_module"))
    assert freezer.settle()
    assert not walked(kept)


def test_a_disabled_freezer_never_freezes(monkeypatch: pytest.MonkeyPatch) -> None:
    freezer = HeapFreezer(enabled=False)
    kept = [object()]
    monkeypatch.setitem(sys.modules, "mesh_heap_test_module", types.ModuleType("mesh_heap_test_module"))
    assert not freezer.settle()
    assert walked(kept)


def test_a_pod_freezes_once_started_and_after_a_load_that_imported_modules(
    models: ModelSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    before_start = [object()]
    with PodThread(pod_settings()) as running:
        assert not walked(before_start)
        before_load = [object()]
        # A framework imported by the load: here a module that appears while the model loads.
        monkeypatch.setitem(sys.modules, "mesh_heap_test_module", types.ModuleType("mesh_heap_test_module"))
        with grpc.insecure_channel(running.target) as channel:
            register(mm_grpc.ModelMeshStub(channel), "m", "sklearn", models.sklearn, load_now=True, sync=True)
        assert not walked(before_load)


def test_a_pod_with_gc_freeze_off_leaves_the_heap_to_the_collector() -> None:
    before_start = [object()]
    with PodThread(pod_settings(gc_freeze=False)):
        assert walked(before_start)
