"""The chart rendered once per session for every value set the tests use."""

from __future__ import annotations

from typing import Any

import pytest

from tests.charts.helm import VALUE_SETS, Helm, find_helm, values_args

Rendered = dict[str | None, list[dict[str, Any]]]


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return find_helm(tmp_path_factory.mktemp("helm"))


@pytest.fixture(scope="session")
def rendered(helm: Helm) -> Rendered:
    """Every object of each value set (None: the chart's defaults)."""
    return {name: helm.render(*values_args(name)) for name in VALUE_SETS}
