"""Run the real helm binary on charts/mesh, offline, with its state in a temporary directory."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "mesh"
VALUES = Path(__file__).resolve().parent / "values"
RELEASE = "demo"
NAMESPACE = "serving"
VALUE_SETS: list[str | None] = [
    None,
    "external-endpoints",
    "external-secret",
    "etcd-3",
    "monitoring-autoscaling",
    "namespaces",
    "namespace-selector",
    "all-namespaces",
]
"""The value sets under tests/charts/values rendered by the tests (None: the chart's defaults)."""
KUBE_VERSION = "1.31.0"
"""The Kubernetes version the chart is rendered for and validated against."""


@dataclass(frozen=True)
class Helm:
    binary: str
    env: dict[str, str]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.binary, *args], env=self.env, capture_output=True, text=True, timeout=60, check=False
        )

    def template(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(
            "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION, *args
        )

    def render(self, *args: str) -> list[dict[str, Any]]:
        """Every object ``helm template`` renders; fails the test with helm's message if it fails."""
        result = self.template(*args)
        assert result.returncode == 0, f"helm template {' '.join(args)} failed:\n{result.stderr}"
        return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def find_helm(tmp: Path) -> Helm:
    """helm from PATH, with its cache, configuration and data dirs under ``tmp``."""
    binary = shutil.which("helm")
    if binary is None:
        pytest.fail("helm not found: run .ci/install-helm")
    env = dict(os.environ)
    for name in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
        env[name] = str(tmp / name.lower())
    return Helm(binary, env)


def values_args(name: str | None) -> tuple[str, ...]:
    """``-f`` for a value set in tests/charts/values (None: the chart's defaults)."""
    return () if name is None else ("-f", str(VALUES / f"{name}.yaml"))


def objects(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in objects(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, rendered {len(found)}"
    return found[0]


def container(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """The container ``name`` of the one workload that runs it."""
    found = [
        c
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet")
        for c in d["spec"]["template"]["spec"]["containers"]
        if c["name"] == name
    ]
    assert len(found) == 1, f"expected one container {name}, rendered {len(found)}"
    return found[0]
