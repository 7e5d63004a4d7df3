"""Every Predictor and InferenceService in README.md is valid for its schema (the chart's CRD, or
KServe's InferenceService schema) and registers as the controller would register it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from adapters import supported_types
from mesh.k8s.resources import IdScheme
from mesh.k8s.spec import registration
from tests.k8s.schemas import ROOT, check, isvc_schema, predictor_crd, predictor_schema


def examples() -> list[dict[str, Any]]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"^```yaml\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    documents = [d for block in blocks for d in yaml.safe_load_all(block) if isinstance(d, dict)]
    return [d for d in documents if d.get("kind") in ("Predictor", "InferenceService")]


def test_readme_has_both_examples() -> None:
    assert {e["kind"] for e in examples()} == {"Predictor", "InferenceService"}


@pytest.mark.parametrize("example", examples(), ids=lambda e: f"{e['kind']}-{e['metadata']['name']}")
def test_example_is_valid_and_registers(example: dict[str, Any], tmp_path: Path) -> None:
    schema = predictor_schema(predictor_crd(tmp_path)) if example["kind"] == "Predictor" else isvc_schema()
    check(example, schema)
    planned = registration(example, ids=IdScheme(), supported=supported_types())
    assert planned is not None and planned.vmodel_id == example["metadata"]["name"]
