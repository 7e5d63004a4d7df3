"""Chart and code cannot drift apart: what the chart hands `mesh serve` and `mesh controller`, read
from the rendered objects (never from a list kept by hand), is what the code reads."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest

from mesh.registry.etcd_config import EtcdConnection
from mesh.settings import ControllerSettings, MeshSettings
from mesh_common.units import parse_size
from mesh_tools.parser import build_parser
from mesh_tools.servers import controller_settings
from tests.charts.conftest import Rendered
from tests.charts.helm import VALUE_SETS, container, objects, one

SETTINGS_VARIABLES = {f"MESH_{name.upper()}" for name in MeshSettings.model_fields}
CONTROLLER_VARIABLES = {f"MESH_CONTROLLER_{name.upper()}" for name in ControllerSettings.model_fields}
READ_BY = {"serve": SETTINGS_VARIABLES, "controller": CONTROLLER_VARIABLES}
"""The variables each command reads: MeshSettings' (MESH_*) and ControllerSettings' (MESH_CONTROLLER_*)."""


def _containers(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        c
        for workload in objects(docs, "Deployment")
        for c in workload["spec"]["template"]["spec"]["containers"]
    ]


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_mesh_variable_is_a_setting(rendered: Rendered, value_set: str | None) -> None:
    for c in _containers(rendered[value_set]):
        names = {e["name"] for e in c.get("env", ()) if e["name"].startswith("MESH_")}
        unknown = names - READ_BY[c["args"][0]]
        assert not unknown, f"`mesh {c['args'][0]}` does not read {sorted(unknown)} (mesh/settings.py)"


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_flag_is_in_the_cli(rendered: Rendered, value_set: str | None) -> None:
    commands = [c["args"] for c in _containers(rendered[value_set])]
    assert sorted(args[0] for args in commands) == ["controller", "serve"]
    for args in commands:
        with contextlib.redirect_stderr(io.StringIO()) as errors:
            try:
                build_parser().parse_args(args)
            except SystemExit:
                pytest.fail(f"`mesh {' '.join(args)}` is refused: {errors.getvalue().strip()}")


def _downward(source: dict[str, Any], limits: dict[str, str]) -> str:
    """What the kubelet puts in a variable from the downward API (a pod's name, IP, memory limit)."""
    if "fieldRef" in source:
        return {"metadata.name": "demo-mesh-7d9f-x2k4q", "status.podIP": "127.0.0.2"}[
            source["fieldRef"]["fieldPath"]
        ]
    field = source["resourceFieldRef"]
    assert field["resource"] == "limits.memory" and field["divisor"] == "1"
    return str(parse_size(limits["memory"]))


@pytest.mark.parametrize("value_set", [None, "external-endpoints"])
def test_the_pods_settings_come_out_as_the_chart_means(
    rendered: Rendered, value_set: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pod container's environment, as the kubelet fills it in, read by MeshSettings: the pod
    binds every address, advertises its IP, sizes its capacity from the memory limit, and reads
    the chart's etcd connection Secret with the code that parses ModelMesh's format."""
    docs = rendered[value_set]
    mesh = container(docs, "mesh")
    secret = one(docs, "Secret")["stringData"]
    mounts = {m["name"]: Path(m["mountPath"]) for m in mesh["volumeMounts"]}
    moved = {mounts["etcd-connection"]: tmp_path / "etcd", mounts["storage-config"]: tmp_path / "storage"}
    for directory in moved.values():
        directory.mkdir()
    for key, text in secret.items():
        (tmp_path / "etcd" / key).write_text(text)
    for name in list(SETTINGS_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    for variable in mesh["env"]:
        value = variable.get("value") or _downward(variable["valueFrom"], mesh["resources"]["limits"])
        for mounted, here in moved.items():
            value = value.replace(str(mounted), str(here))
        monkeypatch.setenv(variable["name"], value)

    settings = MeshSettings()
    limit = parse_size(mesh["resources"]["limits"]["memory"])
    assert settings.capacity_bytes == int(limit * float(settings.capacity_fraction))
    assert (settings.host, settings.port, settings.metrics_port) == ("0.0.0.0", 8033, 2112)
    assert (settings.pod_id, settings.advertise_host) == ("demo-mesh-7d9f-x2k4q", "127.0.0.2")
    assert settings.handoff_timeout_s > 0 and settings.etcd is None
    assert settings.etcd_config is not None
    connection = EtcdConnection.from_file(settings.etcd_config)
    written = json.loads(secret["etcd_connection"])["endpoints"].split(",")
    assert [str(e) for e in connection.endpoints] == written


@pytest.mark.parametrize(
    ("value_set", "namespaces", "selector"),
    [
        (None, ["serving"], ""),
        ("namespaces", ["team-a", "team-b", "team-c"], ""),
        ("namespace-selector", [], "modelmesh-enabled=true"),
        ("all-namespaces", [], ""),
    ],
)
def test_the_controllers_settings_come_out_as_the_chart_means(
    rendered: Rendered,
    value_set: str | None,
    namespaces: list[str],
    selector: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The controller's arguments and environment, read by `mesh controller`'s own parsing."""
    controller = container(rendered[value_set], "controller")
    for name in CONTROLLER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for variable in controller.get("env", ()):
        monkeypatch.setenv(variable["name"], variable["value"])
    settings = controller_settings(build_parser().parse_args(controller["args"]))
    assert settings.target == "demo-mesh.serving.svc:8033"
    assert (settings.namespaces, settings.namespace_selector) == (namespaces, selector)
    ports = {p["name"]: p["containerPort"] for p in controller["ports"]}
    assert ports[controller["livenessProbe"]["httpGet"]["port"]] == settings.liveness_port
    http = "http://demo-mesh.serving.svc:8008" if value_set == "all-namespaces" else ""
    assert settings.http_endpoint == http
