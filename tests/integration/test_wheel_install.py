"""What the image holds works, checked without Docker (no image can be built on these machines).

From a clean checkout of the committed tree (``git archive HEAD``) the test makes the build context
through .dockerignore, copies what the Dockerfile's builder stage COPYs and runs that stage's
``pip wheel`` line; then it runs the final stage's install line, as written in the Dockerfile, into
a fresh venv, and serves real models with the venv's ``mesh serve`` from outside the source tree.
The lines come from the Dockerfile itself (tests/dockerfile.py), so the two cannot drift apart.

What differs from the image, on purpose: the venv's ``python`` stands for the image's; the bind
mounts become local paths; the CPU index option is dropped, because torch 2.13.0+cpu is a wheel on
this machine's disk that pip's own configuration already finds (as do CI's installs just before
the tests), so no network beyond pip's usual index is needed; and the pod binds 127.0.0.1 instead
of the image's MESH_HOST=0.0.0.0, as tests talk to loopback only. pip compiles the installed
modules as it does in the image; the module takes 1.5 to 2 minutes on 2 cores, most of it pip
installing torch.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import joblib
import numpy as np
import onnxruntime as ort
import pytest
import torch
import tritonclient.grpc as tc

from mesh.settings import MeshSettings
from mesh_proto import model_mesh_pb2_grpc as mm_grpc
from mesh_tools.launcher import stop_pod
from tests import dockerfile
from tests.conftest import ModelSet, register, wait_until

pytestmark = pytest.mark.timeout(600)

ROOT = Path(__file__).resolve().parents[2]
CPU_INDEX = re.compile(r"--extra-index-url\s+https://download\.pytorch\.org/whl/cpu(?=\s)")
ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3], [-1.0, 0.5, 2.0, -3.0]])


@dataclass(frozen=True)
class Installed:
    recipe: dockerfile.Dockerfile
    package_files: set[str]
    """What the wheel must hold: each file the builder copied into a package (a folder with
    ``__init__.py``) or a folder below one, as a path in the wheel (``proto/`` holds ``mesh_proto``)."""
    wheel: Path
    venv: Path
    seconds: dict[str, float]

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"


def outside_env(venv: Path, extra: dict[str, str]) -> dict[str, str]:
    """This process's environment less anything that points into the checkout or a venv, and
    less MESH_* variables, with the venv's bin first on PATH and ``extra`` on top. pip's own
    configuration (its index and the folder holding torch's CPU wheel) stays."""
    dropped = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if k not in dropped and not k.startswith("MESH_")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **extra}


def clean_checkout(dest: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD"], capture_output=True, check=True)
    dest.mkdir()
    (dest / "head.tar").write_bytes(archive.stdout)
    with tarfile.open(dest / "head.tar") as tar:
        tar.extractall(dest / "tree", filter="data")
    return dest / "tree"


def build_context(checkout: Path, dest: Path) -> Path:
    patterns = dockerfile.ignore_patterns(checkout / ".dockerignore")
    for path in sorted(checkout.rglob("*")):
        relative = path.relative_to(checkout).as_posix()
        if path.is_file() and not dockerfile.ignored(relative, patterns):
            (dest / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest / relative)
    return dest


def copy_into_stage(stage: dockerfile.Stage, context: Path, root: Path) -> Path:
    """The stage's COPY lines, with ``root`` standing for the image's ``/``; returns its WORKDIR."""
    workdir = root / stage.workdir.lstrip("/")
    for sources, dest in stage.copies:
        target = workdir / dest
        for source in sources:
            origin = context / source
            assert origin.exists(), f"COPY {source}: not in the build context (.dockerignore?)"
            if origin.is_dir():
                shutil.copytree(origin, target, dirs_exist_ok=True)
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, target / origin.name)
    return workdir


def run_script(script: str, *, cwd: Path, env: dict[str, str]) -> None:
    done = subprocess.run(["/bin/sh", "-c", script], cwd=cwd, env=env, capture_output=True, text=True)
    output = done.stdout[-3000:] + done.stderr[-3000:]
    assert done.returncode == 0, f"{script}\nexited {done.returncode}:\n{output}"


def install_script(recipe: dockerfile.Dockerfile, context: Path, dist: Path) -> str:
    """The final stage's install RUN line with its mounts as local paths and no CPU index."""
    run = recipe.final.run_containing("pip install")
    script, dropped = CPU_INDEX.subn("", run.script)
    assert dropped == 1, "the image's install line must take torch from the CPU index"
    for mount in sorted(run.mounts, key=lambda m: -len(m["target"])):
        local = dist if mount.get("from") == "builder" else context / mount["source"]
        script = script.replace(mount["target"], shlex.quote(str(local)))
    return script


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    work = tmp_path_factory.mktemp("image")
    recipe = dockerfile.parse(ROOT / "Dockerfile")
    seconds: dict[str, float] = {}
    started = time.monotonic()
    context = build_context(clean_checkout(work / "checkout"), work / "context")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = outside_env(venv, {})
    seconds["checkout and venv"] = time.monotonic() - started

    started = time.monotonic()
    builder = recipe.stage("builder")
    builder_dir = copy_into_stage(builder, context, work / "builder-root")
    package_files = {
        path.relative_to(builder_dir).as_posix().removeprefix("proto/")
        for path in builder_dir.rglob("*")
        if path.is_file() and any((d / "__init__.py").exists() for d in path.parents if d != builder_dir)
    }
    mount = next(m for m in recipe.final.run_containing("pip install").mounts if m.get("from") == "builder")
    dist = work / "dist"
    (wheel_run,) = builder.runs
    wheel_script = re.sub(rf"(?<=\s){re.escape(mount['source'])}(?=\s|/|$)", str(dist), wheel_run.script)
    run_script(wheel_script, cwd=builder_dir, env=env)
    (wheel,) = dist.glob("*.whl")
    seconds["wheel"] = time.monotonic() - started

    started = time.monotonic()
    run_script(install_script(recipe, context, dist), cwd=work, env=outside_env(venv, recipe.final.env))
    seconds["install"] = time.monotonic() - started
    print(f"image steps took {seconds}")
    return Installed(recipe, package_files, wheel, venv, seconds)


def test_wheel_carries_every_file_of_every_package(installed: Installed) -> None:
    """Each file the builder copies into a package (modules, .proto, .pyi, data files and
    folders) is in the wheel: a subpackage or data file left out of pyproject.toml fails here."""
    import zipfile

    expected = installed.package_files
    assert "mesh_proto/model_mesh.proto" in expected and "mesh_tools/cli.py" in expected
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
    assert sorted(expected - names) == []


def test_venv_holds_exactly_the_pinned_dependencies(installed: Installed) -> None:
    frozen = subprocess.run(
        [installed.python, "-m", "pip", "freeze", "--all", "--exclude", "pip", "--exclude", "mesh"],
        capture_output=True,
        text=True,
        check=True,
        env=outside_env(installed.venv, {}),
    ).stdout
    assert pins(frozen) == pins((ROOT / "constraints.txt").read_text())


def test_mesh_imports_from_the_venv_not_the_checkout(installed: Installed, tmp_path: Path) -> None:
    packages = "mesh, mesh_common, mesh_tools, mesh_proto, adapters, placement, puller"
    code = f"import sysconfig, {packages}; print(sysconfig.get_path('purelib'))"
    code += f"; [print(m.__file__) for m in ({packages})]"
    done = subprocess.run(
        [installed.python, "-c", code],
        cwd=tmp_path,
        env=outside_env(installed.venv, {}),
        capture_output=True,
        text=True,
        check=True,
    )
    site, *files = done.stdout.split()
    assert Path(site).is_relative_to(installed.venv)
    assert all(Path(f).is_relative_to(site) for f in files), files


@pytest.fixture
def serving(installed: Installed, tmp_path: Path) -> Iterator[str]:
    """The venv's ``mesh serve`` with the image's ENTRYPOINT, CMD and ENV, from a folder outside
    the checkout, on a free loopback port."""
    final = installed.recipe.final
    port_file = tmp_path / "port"
    command = [str(installed.venv / "bin" / final.entrypoint[0]), *final.entrypoint[1:], *final.cmd]
    command += ["--port", "0", "--port-file", str(port_file), "--metrics-port", "-1"]
    env = outside_env(installed.venv, {**final.env, "MESH_HOST": "127.0.0.1"})
    with (tmp_path / "pod.log").open("wb") as log:
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)

    def started() -> bool:
        assert process.poll() is None, (tmp_path / "pod.log").read_text()
        return port_file.exists() and port_file.read_text().strip() != ""

    try:
        wait_until(started, within_s=60, what="mesh serve from the venv writing its port")
        yield f"127.0.0.1:{port_file.read_text().strip()}"
    finally:
        stop_pod(process)
    assert process.returncode == 0, (tmp_path / "pod.log").read_text()


def test_installed_mesh_serves_each_format(installed: Installed, serving: str, models: ModelSet) -> None:
    with grpc.insecure_channel(serving) as channel:
        api = mm_grpc.ModelMeshStub(channel)
        for model_id, kind, path in (
            ("iris", "sklearn", models.sklearn),
            ("mlp-onnx", "onnx", models.onnx),
            ("mlp-pt", "pytorch", models.pytorch),
        ):
            register(api, model_id, kind, path, load_now=True, sync=True)
    client = tc.InferenceServerClient(serving)
    try:
        proba = infer(client, "iris", "input-0", ROWS, "predict_proba")
        np.testing.assert_allclose(proba, joblib.load(models.sklearn).predict_proba(ROWS))
        data = ROWS.astype(np.float32)
        (scores,) = ort.InferenceSession(str(models.onnx)).run(["scores"], {"x": data})
        np.testing.assert_allclose(infer(client, "mlp-onnx", "x", data, "scores"), scores, rtol=1e-6)
        with torch.no_grad():
            expected = torch.jit.load(str(models.pytorch))(torch.from_numpy(data)).numpy()
        np.testing.assert_allclose(infer(client, "mlp-pt", "x", data, "output__0"), expected, rtol=1e-6)
    finally:
        client.close()


def infer(
    client: tc.InferenceServerClient, model: str, name: str, array: np.ndarray, output: str
) -> np.ndarray:
    tensor = tc.InferInput(name, list(array.shape), "FP64" if array.dtype == np.float64 else "FP32")
    tensor.set_data_from_numpy(array)
    result = client.infer(model, [tensor], outputs=[tc.InferRequestedOutput(output)], client_timeout=60)
    return result.as_numpy(output)


def pins(text: str) -> dict[str, str]:
    """name -> pinned version, names normalized as PEP 503 does."""
    lines = (line.split("#")[0].strip() for line in text.splitlines())
    pairs = (line.split("==") for line in lines if line)
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in pairs}


def test_constraints_pin_every_dependency_within_its_range() -> None:
    from packaging.requirements import Requirement

    pinned = pins((ROOT / "constraints.txt").read_text())
    assert pinned["torch"] == "2.13.0+cpu", "the image must take torch's CPU wheel"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for line in project["dependencies"]:
        requirement = Requirement(line)
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        assert name in pinned, f"{requirement.name} is not pinned in constraints.txt: regenerate it"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"constraints.txt pins {name}=={pinned[name]}, outside {requirement}: regenerate it"
        )


def test_dockerfile_runs_mesh_serve_as_a_fixed_non_root_user() -> None:
    recipe = dockerfile.parse(ROOT / "Dockerfile")
    final = recipe.final
    assert re.fullmatch(r"python:3\.11-slim-\w+", recipe.args["PYTHON_IMAGE"])
    assert sys.version_info[:2] == (3, 11), "the test's venv must be the image's Python"
    assert all(stage.base == recipe.args["PYTHON_IMAGE"] for stage in recipe.stages)
    uid = final.user.split(":")[0] if final.user else "0"
    assert uid.isdigit() and int(uid) != 0, f"USER {final.user}: a fixed numeric uid, not root"
    assert (final.entrypoint, final.cmd) == (["mesh"], ["serve"])
    assert {8033, 8008, 2112} <= set(final.expose)
    assert final.env["MESH_HOST"] == "0.0.0.0"
    assert {"PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED"} <= set(final.env)
    fields = {f"MESH_{name.upper()}" for name in MeshSettings.model_fields}
    assert {name for name in final.env if name.startswith("MESH_")} <= fields
    install = final.run_containing("pip install").script
    assert "--constraint" in install and "--no-cache-dir" in install
    assert not re.search(r"(^|\s)(-e|--editable)(\s|$)", install), "the wheel, not an editable install"
    assert not any(re.search(r"apt-get|gcc|g\+\+|build-essential", run.script) for run in final.runs)


def test_dockerignore_keeps_out_what_the_image_does_not_need() -> None:
    patterns = dockerfile.ignore_patterns(ROOT / ".dockerignore")
    for path in (
        ".git/HEAD",
        ".venv/bin/python",
        "bench/.venvs/x/bin/python",
        "tests/conftest.py",
        "mesh/__pycache__/cli.cpython-311.pyc",
        "mesh.egg-info/PKG-INFO",
        ".mypy_cache/x",
    ):
        assert dockerfile.ignored(path, patterns), path
    for path in ("mesh_tools/cli.py", "proto/mesh_proto/model_mesh.proto", "constraints.txt", "README.md"):
        assert not dockerfile.ignored(path, patterns), path
