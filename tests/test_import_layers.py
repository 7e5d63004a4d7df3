"""The import layers (``[tool.importlinter]`` in pyproject.toml, run by ``lint-imports`` in CI).

The contracts cover every crossing the design forbids, the tree keeps them, and each contract
catches an import it forbids: a copy of the tree with one import added fails that contract.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

# (importer, imported): what the design forbids, whichever contract says it.
FORBIDDEN = [
    *(("placement", other) for other in ("mesh", "mesh_common", "mesh_tools", "puller", "adapters")),
    *((edge, other) for edge in ("puller", "adapters") for other in ("mesh", "mesh_tools", "placement")),
    ("puller", "adapters"),
    ("adapters", "puller"),
    *(("mesh_common", other) for other in ("mesh", "mesh_tools", "placement", "puller", "adapters")),
    ("mesh", "mesh_tools"),
    ("mesh.k8s", "mesh.registry"),
]


def contracts() -> list[dict[str, object]]:
    config = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]
    listed: list[dict[str, object]] = config["contracts"]
    return listed


def forbidden_pairs() -> set[tuple[str, str]]:
    pairs: set[tuple[str, str]] = set()
    for contract in contracts():
        if contract["type"] == "forbidden":
            sources, targets = contract["source_modules"], contract["forbidden_modules"]
            assert isinstance(sources, list) and isinstance(targets, list)
            pairs.update(itertools.product(sources, targets))
        elif contract["type"] == "independence":
            modules = contract["modules"]
            assert isinstance(modules, list)
            pairs.update(itertools.permutations(modules, 2))
    return pairs


def test_the_contracts_forbid_every_crossing_the_design_names() -> None:
    missing = [pair for pair in FORBIDDEN if pair not in forbidden_pairs()]
    assert missing == []


def test_only_the_simulators_size_flag_is_let_through() -> None:
    ignored = [contract.get("ignore_imports", []) for contract in contracts()]
    assert [i for i in ignored if i] == [["placement.simulate -> mesh_common.units"]]


def lint(tree: Path, *contract_ids: str) -> subprocess.CompletedProcess[str]:
    chosen = [arg for cid in contract_ids for arg in ("--contract", cid)]
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", *chosen],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{tree / 'proto'}"},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the packages and pyproject.toml that a case may add an import to."""
    copy = tmp_path_factory.mktemp("tree")
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("mesh", "mesh_common", "mesh_tools", "placement", "puller", "adapters"):
        shutil.copytree(ROOT / package, copy / package, ignore=skip)
    shutil.copytree(ROOT / "proto" / "mesh_proto", copy / "proto" / "mesh_proto", ignore=skip)
    shutil.copy(PYPROJECT, copy / "pyproject.toml")
    return copy


def test_the_tree_keeps_every_contract() -> None:
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_copied_tree_keeps_every_contract(tree: Path) -> None:
    done = lint(tree)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def added(tree: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """Appends lines to modules of the copy (``request.param``: (module, lines) pairs); restores
    them afterwards."""
    originals = {tree / module: (tree / module).read_text() for module, _ in request.param}
    for module, lines in request.param:
        path = tree / module
        path.write_text(path.read_text() + "\n" + lines + "\n")
    yield tree
    for path, text in originals.items():
        path.write_text(text)


@pytest.mark.parametrize(
    ("added", "contract"),
    [
        ([("placement/cluster.py", "import mesh.settings")], "placement-pure"),
        ([("placement/loading.py", "from mesh_common import errors")], "placement-pure"),
        ([("placement/copies.py", "import puller")], "placement-pure"),
        ([("puller/base.py", "import mesh.settings")], "edges-use-common-only"),
        ([("adapters/base.py", "from mesh import records")], "edges-use-common-only"),
        ([("adapters/sklearn.py", "import mesh_proto.model_mesh_pb2")], "edges-use-common-only"),
        # An import inside a function counts as well.
        ([("puller/local.py", "def _late() -> None:\n    import mesh.pod")], "edges-use-common-only"),
        ([("puller/s3.py", "import adapters.datatypes")], "puller-adapters-independent"),
        ([("mesh_common/units.py", "import placement.cluster")], "common-imports-nothing"),
        ([("mesh/cache.py", "from mesh_tools import samples")], "core-without-tools"),
        ([("mesh/k8s/spec.py", "from mesh.registry import store")], "controller-is-a-client"),
        # Through a module the controller may import: the chain counts.
        (
            [("mesh/k8s/status.py", "import mesh.bounds"), ("mesh/bounds.py", "import mesh.registry.store")],
            "controller-is-a-client",
        ),
    ],
    indirect=["added"],
)
def test_each_contract_catches_an_import_it_forbids(added: Path, contract: str) -> None:
    assert contract in {str(c["id"]) for c in contracts()}
    done = lint(added, contract)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "BROKEN" in done.stdout
