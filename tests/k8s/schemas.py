"""The schemas resources are checked against: the chart's Predictor CRD (rendered by helm) and
KServe's InferenceService schema (a fixture; ``fixtures/inferenceservice_v1beta1.json`` says
where it comes from)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CRD_TEMPLATE = ROOT / "charts" / "mesh" / "templates" / "crds" / "predictor.yaml"
ISVC_FIXTURE = Path(__file__).parent / "fixtures" / "inferenceservice_v1beta1.json"


def helm() -> str:
    found = shutil.which("helm")
    if found is None:
        pytest.fail("helm not found: run .ci/install-helm")
    return found


def render_crd(tmp: Path, *, install: bool = True) -> list[dict[str, Any]]:
    """``helm template`` of the CRD template in a chart of its own (``crds.install`` as given)."""
    chart = tmp / "crd-chart"
    (chart / "templates" / "crds").mkdir(parents=True, exist_ok=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: crd-check\nversion: 0.0.1\n")
    (chart / "values.yaml").write_text(f"crds:\n  install: {str(install).lower()}\n")
    shutil.copy(CRD_TEMPLATE, chart / "templates" / "crds" / "predictor.yaml")
    env = {
        "HELM_CACHE_HOME": str(tmp / "c"),
        "HELM_CONFIG_HOME": str(tmp / "f"),
        "HELM_DATA_HOME": str(tmp / "d"),
    }
    out = subprocess.run(
        [helm(), "template", "check", str(chart)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=True,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def predictor_crd(tmp: Path) -> dict[str, Any]:
    (crd,) = render_crd(tmp)
    return crd


def predictor_schema(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def isvc_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(ISVC_FIXTURE.read_text())["openAPIV3Schema"]
    return schema


def without_nulls(value: Any) -> Any:
    """What the API server keeps of a merge patch: ``None`` fields are removed, not stored."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def pruned_fields(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """The fields of ``value`` the API server would prune (not in the structural schema; a node
    with ``x-kubernetes-preserve-unknown-fields`` keeps unknown fields, not its known ones' unknowns)."""
    keep_unknown = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
    found: list[str] = []
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if props is not None and key in props:
                found += pruned_fields(item, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                found += pruned_fields(item, extra, f"{path}.{key}")
            elif not keep_unknown and (props is not None or extra is False):
                found.append(f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            found += pruned_fields(item, schema["items"], f"{path}[{i}]")
    return found


def check(value: Any, schema: dict[str, Any]) -> None:
    """``value`` is valid for ``schema`` and the API server would keep every field of it."""
    kept = without_nulls(value)
    jsonschema.validate(kept, schema, cls=jsonschema.Draft7Validator)
    assert pruned_fields(kept, schema) == [], "fields the API server would prune"
