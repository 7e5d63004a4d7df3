"""The kopf handlers, called as kopf calls them (a ``kopf.Body`` of the object as the API server
sends it, a ``kopf.Patch``, the usual keyword arguments), against a real fleet."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import kopf
import pytest

from mesh.k8s.handlers import VMODEL_ANNOTATION, Handlers, NamespaceScope
from mesh.k8s.resources import IdScheme, ResourceRef
from mesh_tools.etcd_process import free_port
from tests.conftest import ModelSet
from tests.k8s.bodies import inference_service, predictor
from tests.k8s.fleet import controller_for, fleet_of, infer

pytestmark = pytest.mark.timeout(120)


def kwargs(raw: dict[str, Any]) -> dict[str, Any]:
    body = kopf.Body(raw)
    return {
        "body": body,
        "spec": body.spec,
        "meta": body.metadata,
        "status": body.status,
        "namespace": body.metadata.namespace,
        "name": body.metadata.name,
        "uid": body.metadata.uid,
        "patch": kopf.Patch(),
        "logger": __import__("logging").getLogger("kopf-test"),
        "reason": "create",
        "diff": (),
        "old": None,
        "new": raw,
        "retry": 0,
        "started": None,
        "runtime": None,
        "memo": kopf.Memo(),
        "param": None,
    }


async def test_handlers_register_annotate_and_delete(etcd, models: ModelSet, tmp_path: Path) -> None:
    scope = NamespaceScope(namespaces=("team-a", "team-b"))
    async with (
        fleet_of(etcd, tmp_path) as fleet,
        controller_for(fleet.target, ids=IdScheme(scope.several)) as ctl,
    ):
        handlers = Handlers(ctl.reconciler, scope)
        pred = predictor("iris", str(models.sklearn), namespace="team-a")
        isvc = inference_service("iris", f"file://{models.onnx}", namespace="team-b", model_format="onnx")
        plain = inference_service("other", f"file://{models.onnx}", namespace="team-b", modelmesh=False)
        assert handlers.serves(**kwargs(pred)) and not handlers.serves(namespace="team-c")

        pred_kw, isvc_kw, plain_kw = kwargs(pred), kwargs(isvc), kwargs(plain)
        await handlers.apply(**pred_kw)
        await handlers.apply(**isvc_kw)
        await handlers.apply(**plain_kw)  # kopf's annotation filter keeps these out; ignored anyway
        assert dict(pred_kw["patch"]) == {}
        assert isvc_kw["patch"]["metadata"]["annotations"] == {VMODEL_ANNOTATION: "iris.team-b"}
        again = kwargs({**isvc, "metadata": {**isvc["metadata"], "annotations": {
            **isvc["metadata"]["annotations"], VMODEL_ANNOTATION: "iris.team-b"}}})  # fmt: skip
        await handlers.apply(**again)
        assert dict(again["patch"]) == {}

        with fleet.client() as client:
            listing = client.list_models()
            assert sorted(v.vmodel_id for v in listing.vmodels) == ["iris.team-a", "iris.team-b"]
            owners = {v.vmodel_id: v.owner for v in listing.vmodels}
            assert owners == {"iris.team-a": "ksp", "iris.team-b": "isvc"}
            tenants = {client.describe(m.model_id).tenant for m in listing.models}
            assert tenants == {"team-a", "team-b"}

        await asyncio.to_thread(infer, fleet.target, "iris.team-a")
        _, status = await ctl.writer.wait_for(
            ResourceRef.of(pred), lambda s: s["activeModelState"] == "Loaded", within_s=10, what="Loaded"
        )
        assert status["vModelId"] == "iris.team-a"

        await handlers.delete(**kwargs(pred))
        await handlers.delete(**kwargs(isvc))
        with fleet.client() as client:
            listing = client.list_models()
            assert not listing.vmodels and not listing.models


async def test_delete_waits_for_the_mesh(models: ModelSet) -> None:
    async with controller_for(f"127.0.0.1:{free_port()}") as ctl:
        handlers = Handlers(ctl.reconciler, NamespaceScope(namespaces=("team-a",)))
        body = predictor("m", str(models.sklearn))
        await handlers.apply(**kwargs(body))  # no exception: the status says the mesh is unreachable
        with pytest.raises(kopf.TemporaryError, match="did not answer"):
            await handlers.delete(**kwargs(body))  # kopf keeps the finalizer and retries


async def test_namespaces_by_label(etcd, models: ModelSet, tmp_path: Path) -> None:
    scope = NamespaceScope(selector=("modelmesh-enabled", "true"))
    waiting = {"team-x": [predictor("late", str(models.sklearn), namespace="team-x")]}

    async def lister(namespace: str) -> list[dict[str, Any]]:  # the API server's list, for the test
        return waiting.get(namespace, [])

    async with (
        fleet_of(etcd, tmp_path) as fleet,
        controller_for(fleet.target, ids=IdScheme(scope.several)) as ctl,
    ):
        handlers = Handlers(ctl.reconciler, scope, lister)
        assert not handlers.serves(namespace="team-x")
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-x", "labels": {}}}
        await handlers.namespace_event(body=kopf.Body(namespace), type="ADDED")
        assert not handlers.serves(namespace="team-x")
        namespace["metadata"]["labels"] = {"modelmesh-enabled": "true"}
        await handlers.namespace_event(body=kopf.Body(namespace), type="MODIFIED")
        assert handlers.serves(namespace="team-x")
        with fleet.client() as client:
            assert [v.vmodel_id for v in client.list_models().vmodels] == ["late.team-x"]
        await handlers.namespace_event(body=kopf.Body(namespace), type="DELETED")
        assert not handlers.serves(namespace="team-x")
