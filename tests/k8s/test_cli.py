"""``mesh controller``'s flags -> its settings (the chart passes exactly these flags)."""

from __future__ import annotations

import pytest

from mesh.k8s.operator import scope_of
from mesh_tools.parser import build_parser
from mesh_tools.servers import controller_settings


def settings(*argv: str):
    return controller_settings(build_parser().parse_args(["controller", *argv]))


def test_flags() -> None:
    s = settings(
        "--target", "mesh.serving.svc:8033", "--namespace", "a", "--namespace", "b",
        "--resync-s", "60", "--liveness-port", "9000",
    )  # fmt: skip
    assert (s.target, s.namespaces, s.resync_s, s.liveness_port) == (
        "mesh.serving.svc:8033",
        ["a", "b"],
        60,
        9000,
    )
    scope = scope_of(s)
    assert scope.several and scope.kopf_scope() == {"namespaces": ["a", "b"]}
    one = scope_of(settings("--target", "t:1", "--namespace", "a"))
    assert not one.several and one.serves("a") and not one.serves("b")


def test_namespace_selector_and_all() -> None:
    s = settings("--target", "t:1", "--namespace-selector", "modelmesh-enabled=true")
    assert s.selector() == ("modelmesh-enabled", "true")
    scope = scope_of(s)
    assert scope.several and scope.kopf_scope() == {"clusterwide": True} and not scope.serves("x")
    every = scope_of(settings("--target", "t:1", "--all-namespaces"))
    assert every.serves("anything") and every.kopf_scope() == {"clusterwide": True}
    assert scope_of(settings("--target", "t:1")).kopf_scope() == {"clusterwide": True}  # no flag: all


def test_defaults_and_bad_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings()
    assert (s.resync_s, s.liveness_port) == (300.0, 8081)
    monkeypatch.setenv("MESH_CONTROLLER_TARGET", "from-env:8033")
    assert settings().target == "from-env:8033"
    with pytest.raises(ValueError, match="KEY=VALUE"):
        settings("--namespace-selector", "no-equals-sign")
    with pytest.raises(ValueError, match="resync_s"):
        settings("--resync-s", "0")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["controller", "--namespace", "a", "--all-namespaces"])


@pytest.mark.parametrize(
    "args",
    [  # what the chart's controller Deployment passes, per value set (helm template of charts/mesh)
        ["--target", "mesh.models.svc:8033", "--namespace", "models", "--liveness-port", "8081"],
        ["--target", "mesh.models.svc:8033", "--namespace-selector", "modelmesh-enabled=true",
         "--liveness-port", "8081"],
        ["--target", "mesh.models.svc:8033", "--all-namespaces", "--liveness-port", "8081"],
        ["--target", "mesh.models.svc:8033", "--namespace", "a", "--namespace", "b",
         "--liveness-port", "8081"],
    ],
)  # fmt: skip
def test_the_charts_arguments_parse(args: list[str]) -> None:
    s = settings(*args)
    assert s.target == "mesh.models.svc:8033" and s.liveness_port == 8081


def test_without_credentials_it_says_so(tmp_path) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "missing")}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    done = subprocess.run(
        [sys.executable, "-m", "mesh_tools.cli", "controller", "--target", "127.0.0.1:1", "--namespace", "a"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "error: no Kubernetes credentials" in done.stderr
