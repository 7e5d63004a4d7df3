"""charts/mesh rendered by the real helm and validated offline: no Kubernetes API server can run
on these machines, so every object is checked against the Kubernetes schemas (kubernetes-validate),
and the Prometheus Operator's kinds against small schemas of their own (operator_schemas.py).
test_chart_drift.py checks what the chart hands `mesh serve` and `mesh controller` against the code."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.charts.conftest import Rendered
from tests.charts.helm import (
    CHART,
    KUBE_VERSION,
    NAMESPACE,
    VALUE_SETS,
    Helm,
    container,
    find_helm,
    objects,
    one,
)
from tests.charts.helm import values_args as given
from tests.charts.operator_schemas import SCHEMAS


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_lint_passes(helm: Helm, value_set: str | None) -> None:
    result = helm.run("lint", str(CHART), "--strict", "--kube-version", KUBE_VERSION, *given(value_set))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_object_validates_offline(rendered: Rendered, value_set: str | None) -> None:
    docs = rendered[value_set]
    assert docs
    for doc in docs:
        what = f"{doc['kind']} {doc['metadata']['name']}"
        if doc["kind"] in SCHEMAS:
            jsonschema.validate(doc, SCHEMAS[doc["kind"]])
            continue
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{what} is not a valid Kubernetes {KUBE_VERSION} object: {exc.message}")


def test_defaults_run_pods_etcd_and_a_namespaced_controller(
    rendered: Rendered,
) -> None:
    docs = rendered[None]
    pods = one(docs, "Deployment", "demo-mesh")
    spec = pods["spec"]["template"]["spec"]
    mesh = container(docs, "mesh")
    env = {e["name"]: e for e in mesh["env"]}
    assert env["MESH_POD_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["MESH_ADVERTISE_HOST"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    limit = env["MESH_MEMORY_LIMIT"]["valueFrom"]["resourceFieldRef"]
    assert (limit["resource"], limit["divisor"]) == ("limits.memory", "1")
    assert mesh["resources"]["limits"]["memory"]
    assert env["MESH_CAPACITY_FRACTION"]["value"] == "0.6"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert mesh[probe]["grpc"] == {"port": 8033, "service": ""}
    grace = int(env["MESH_STOP_GRACE_S"]["value"]) + int(env["MESH_HANDOFF_TIMEOUT_S"]["value"])
    assert spec["terminationGracePeriodSeconds"] > grace
    assert spec["securityContext"]["runAsUser"] == 10001 and spec["securityContext"]["runAsNonRoot"]
    assert mesh["securityContext"]["readOnlyRootFilesystem"]
    mounts = {m["mountPath"]: m["name"] for m in mesh["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]] and env["MESH_CACHE_DIR"]["value"].startswith("/tmp/")
    assert volumes[mounts["/etc/mesh/storage"]]["secret"] == {
        "secretName": "storage-config",
        "optional": True,
    }
    assert env["MESH_STORAGE_CONFIG"]["value"] == "/etc/mesh/storage"
    assert Path(env["MESH_ETCD_CONFIG"]["value"]).parent == Path("/etc/mesh/etcd")
    connection = json.loads(one(docs, "Secret")["stringData"]["etcd_connection"])
    etcd = one(docs, "StatefulSet")
    assert etcd["spec"]["replicas"] == 1 and etcd["spec"]["volumeClaimTemplates"]
    assert connection["endpoints"] == "http://demo-mesh-etcd-0.demo-mesh-etcd-peers.serving.svc:2379"
    assert one(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    assert one(docs, "Service", "demo-mesh")["spec"]["ports"][0]["port"] == 8033
    assert one(docs, "Service", "demo-mesh-pods")["spec"]["clusterIP"] == "None"
    assert [r["metadata"]["namespace"] for r in objects(docs, "Role")] == [NAMESPACE]
    assert not objects(docs, "ClusterRole") and not objects(docs, "HorizontalPodAutoscaler")
    assert "prometheus.io/scrape" in pods["spec"]["template"]["metadata"]["annotations"]
    crd = one(docs, "CustomResourceDefinition")
    assert (crd["metadata"]["name"], crd["spec"]["group"]) == (
        "predictors.serving.kserve.io",
        "serving.kserve.io",
    )


def test_crds_install_off_leaves_the_crd_out(rendered: Rendered) -> None:
    assert not objects(rendered["all-namespaces"], "CustomResourceDefinition")


def test_three_etcd_members_form_one_cluster(rendered: Rendered) -> None:
    docs = rendered["etcd-3"]
    etcd = one(docs, "StatefulSet")
    env = {e["name"]: e.get("value") for e in container(docs, "etcd")["env"]}
    members = dict(m.split("=", 1) for m in env["ETCD_INITIAL_CLUSTER"].split(","))
    assert sorted(members) == [f"demo-mesh-etcd-{i}" for i in range(3)]
    assert etcd["spec"]["replicas"] == 3 and etcd["spec"]["podManagementPolicy"] == "Parallel"
    claim = etcd["spec"]["volumeClaimTemplates"][0]["spec"]
    assert claim["storageClassName"] == "fast-ssd" and claim["resources"]["requests"]["storage"] == "8Gi"
    endpoints = json.loads(one(docs, "Secret")["stringData"]["etcd_connection"])["endpoints"].split(",")
    assert len(endpoints) == 3


def test_external_etcd_by_endpoints_or_by_secret(rendered: Rendered) -> None:
    by_url = rendered["external-endpoints"]
    assert not objects(by_url, "StatefulSet")
    connection = json.loads(one(by_url, "Secret")["stringData"]["etcd_connection"])
    assert connection["endpoints"] == "http://etcd-0.etcd.infra.svc:2379,http://etcd-1.etcd.infra.svc:2379"
    by_secret = rendered["external-secret"]
    assert not objects(by_secret, "StatefulSet") and not objects(by_secret, "Secret")
    volumes = one(by_secret, "Deployment", "demo-mesh")["spec"]["template"]["spec"]["volumes"]
    secrets = {v["secret"]["secretName"] for v in volumes if "secret" in v}
    assert secrets == {"model-serving-etcd", "my-storage"}


def test_autoscaling_and_monitoring(rendered: Rendered) -> None:
    docs = rendered["monitoring-autoscaling"]
    assert "replicas" not in one(docs, "Deployment", "demo-mesh")["spec"]
    hpa = one(docs, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"]["name"] == "demo-mesh" and (hpa["minReplicas"], hpa["maxReplicas"]) == (
        3,
        12,
    )
    assert hpa["metrics"][0]["pods"]["target"] == {"type": "AverageValue", "averageValue": "0.75"}
    scale_down = hpa["behavior"]["scaleDown"]
    assert scale_down["stabilizationWindowSeconds"] > 0
    assert [(p["type"], p["value"]) for p in scale_down["policies"]] == [("Pods", 1)]
    monitor = one(docs, "ServiceMonitor")
    scraped = [
        s
        for s in objects(docs, "Service")
        if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert len(scraped) == 1, "each pod must be scraped through exactly one Service"
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in scraped[0]["spec"]["ports"]}
    alerts = {r["alert"] for g in one(docs, "PrometheusRule")["spec"]["groups"] for r in g["rules"]}
    assert {
        "MeshPodOutOfRoom",
        "MeshModelLoadFailures",
        "MeshJanitorStuck",
        "MeshRegistryUnreachable",
    } <= alerts
    dashboard = one(docs, "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["namespace"] == "monitoring"
    assert json.loads(dashboard["data"]["mesh.json"]) == json.loads(
        (CHART / "dashboards" / "mesh.json").read_text()
    )


RULES = [
    (["serving.kserve.io"], ["predictors", "inferenceservices"], ["get", "list", "watch", "patch", "update"]),
    (
        ["serving.kserve.io"],
        [f"{r}/{s}" for r in ("predictors", "inferenceservices") for s in ("status", "finalizers")],
        ["get", "patch", "update"],
    ),
    ([""], ["events"], ["create", "patch"]),
]


def _rules(role: dict[str, Any]) -> list[tuple[list[str], list[str], list[str]]]:
    return [(r["apiGroups"], r["resources"], r["verbs"]) for r in role["rules"]]


@pytest.mark.parametrize(
    ("value_set", "flags", "namespaces"),
    [
        (None, ["--namespace", NAMESPACE], [NAMESPACE]),
        (
            "namespaces",
            ["--namespace", "team-a", "--namespace", "team-b", "--namespace", "team-c"],
            ["team-a", "team-b", "team-c"],
        ),
        ("namespace-selector", ["--namespace-selector", "modelmesh-enabled=true"], None),
        ("all-namespaces", ["--all-namespaces"], None),
    ],
)
def test_controller_rbac_is_least_privilege(
    rendered: Rendered,
    value_set: str | None,
    flags: list[str],
    namespaces: list[str] | None,
) -> None:
    docs = rendered[value_set]
    args = container(docs, "controller")["args"]
    assert args[:3] == ["controller", "--target", f"demo-mesh.{NAMESPACE}.svc:8033"]
    assert args[3:] == [*flags, "--liveness-port", "8081"]
    account = one(docs, "ServiceAccount")["metadata"]["name"]
    if namespaces is not None:
        assert not objects(docs, "ClusterRole") and not objects(docs, "ClusterRoleBinding")
        assert [r["metadata"]["namespace"] for r in objects(docs, "Role")] == namespaces
        assert all(_rules(role) == RULES for role in objects(docs, "Role"))
        for binding in objects(docs, "RoleBinding"):
            assert binding["subjects"] == [
                {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
            ]
    else:
        assert not objects(docs, "Role")
        role = one(docs, "ClusterRole")
        assert _rules(role) == [
            *RULES,
            ([""], ["namespaces"], ["get", "list", "watch"]),
            (["apiextensions.k8s.io"], ["customresourcedefinitions"], ["list", "watch"]),
        ]
        assert one(docs, "ClusterRoleBinding")["roleRef"]["name"] == role["metadata"]["name"]


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ("pods:\n  capacityFraction: 1.5\n", "pods.capacityFraction"),
        ("etcd:\n  bundled:\n    replicas: 2\n", "etcd.bundled.replicas"),
        ("etcd:\n  mode: external\n", "etcd.external.endpoints"),
        ("controller:\n  namespaces: [a]\n  allNamespaces: true\n", "controller.namespaces"),
        ("etcd:\n  external:\n    endpoints: http://etcd:2379\n", "etcd.mode"),
    ],
)
@pytest.mark.parametrize("schema", ["checked", "skipped"])
def test_values_that_cannot_work_fail_naming_the_value(
    helm: Helm, tmp_path: Path, values: str, named: str, schema: str
) -> None:
    """Each is refused by values.schema.json or by the templates' own checks (mesh.validate), and
    still by the templates when the schema is skipped; the message names the value (a path such as
    /pods/capacityFraction, or pods.capacityFraction)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(values)
    skip = ("--skip-schema-validation",) if schema == "skipped" else ()
    result = helm.template("-f", str(bad), *skip)
    assert result.returncode != 0, f"helm template accepted {values!r}"
    path = "/" + named.replace(".", "/")
    assert named in result.stderr or path in result.stderr, result.stderr
    if schema == "skipped":
        assert named in result.stderr, result.stderr


def test_decimals_given_with_set_are_accepted_or_refused_by_value(helm: Helm) -> None:
    """--set passes 0.5 as a string: the schema takes numeric strings, and still refuses 1.5."""
    assert helm.template("--set", "pods.capacityFraction=0.5").returncode == 0
    refused = helm.template("--set", "pods.capacityFraction=1.5")
    assert refused.returncode != 0 and "capacityFraction" in refused.stderr


def _leaves(values: Any, schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Each value's dotted path with its schema, down to values whose schema has no properties."""
    properties = schema.get("properties")
    if not isinstance(values, dict) or properties is None:
        yield path, schema
        return
    for key, value in values.items():
        where = f"{path}.{key}" if path else key
        assert key in properties, f"values.schema.json does not describe {where}"
        yield from _leaves(value, properties[key], where)


def test_schema_covers_and_documents_every_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(values, schema)
    readme = (CHART / "README.md").read_text()
    leaves = dict(_leaves(values, schema))
    assert len(leaves) > 60
    for path, described in leaves.items():
        assert described.get("description"), f"{path} has no description in values.schema.json"
        assert "type" in described or "oneOf" in described, f"{path} has no type in values.schema.json"
        assert f"| `{path}` |" in readme, f"charts/mesh/README.md does not list {path}"


def test_without_helm_the_chart_tests_fail_saying_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match=r"helm not found: run \.ci/install-helm"):
        find_helm(tmp_path)


@pytest.mark.parametrize("value_set", [None, "monitoring-autoscaling", "namespace-selector"])
def test_notes_tell_how_to_call_the_mesh(helm: Helm, value_set: str | None) -> None:
    result = helm.run(
        "install", "demo", str(CHART), "--namespace", NAMESPACE, "--dry-run=client", *given(value_set)
    )
    assert result.returncode == 0, result.stderr
    notes = result.stdout.partition("NOTES:")[2]
    assert f"demo-mesh.{NAMESPACE}.svc.cluster.local:8033" in notes
    assert ("mesh_cache_pressure" in notes) == (value_set == "monitoring-autoscaling")
