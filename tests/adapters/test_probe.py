"""Trial loads in a worker process: an artifact that kills its loader fails its load, named for
how the loader died, and the process that asked lives on; workers end with the probe."""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import joblib
import psutil
import pytest

from adapters import adapter_for
from adapters.probe import LoadProbe
from mesh_common.errors import LoaderCrashed, ModelLoadFailed, Unavailable
from mesh_tools import samples
from tests.conftest import wait_until


class _Segfault:
    def __reduce__(self) -> tuple[object, tuple[int]]:
        return ctypes.string_at, (0,)  # reads address 0


class _Sabotage:
    """Unpickles as nothing, having made every later ``joblib.load`` in its process end it."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return exec, ("import joblib, os\njoblib.load = lambda *args, _exit=os._exit, **kwargs: _exit(7)",)


class _Sleep:
    def __reduce__(self) -> tuple[object, tuple[float]]:
        return time.sleep, (60.0,)


def _dump(directory: Path, thing: object) -> Path:
    directory.mkdir(parents=True)
    path = directory / "model.joblib"
    joblib.dump(thing, path)
    return path


@pytest.fixture
def probe() -> Iterator[LoadProbe]:
    running = LoadProbe(workers=1)
    yield running
    running.stop()
    assert running.workers() == []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_pickle_that_exits_fails_its_load_naming_the_exit_code(probe: LoadProbe, tmp_path: Path) -> None:
    good = samples.sklearn_classifier(tmp_path / "good")
    poison = samples.poison_pickle(tmp_path / "poison", exit_code=3)
    adapter = adapter_for("sklearn")
    probe.check("good", adapter, good, timeout_s=60)
    assert probe.workers() == []  # each trial's worker ends with it
    with pytest.raises(LoaderCrashed) as failed:
        probe.check("poison", adapter, poison, timeout_s=60)
    assert failed.value.reason == "the loader process died while loading model.joblib: exit code 3"
    assert failed.value.model_id == "poison"
    assert probe.workers() == []
    with pytest.raises(LoaderCrashed):  # a failed artifact is tried again, never remembered as good
        probe.check("poison", adapter, poison.parent, timeout_s=60)
    other = samples.sklearn_classifier(tmp_path / "other", seed=1)
    probe.check("other", adapter, other, timeout_s=60)  # a new worker serves the next load


def test_a_pickle_that_segfaults_fails_its_load_naming_the_signal(probe: LoadProbe, tmp_path: Path) -> None:
    path = _dump(tmp_path / "segv", _Segfault())
    with pytest.raises(LoaderCrashed, match=r"died while loading model\.joblib: killed by SIGSEGV$"):
        probe.check("segv", adapter_for("sklearn"), path, timeout_s=60)


def test_a_corrupt_artifact_fails_as_it_would_in_the_pod(probe: LoadProbe, tmp_path: Path) -> None:
    path = tmp_path / "model.joblib"
    path.write_bytes(b"not a pickle")
    with pytest.raises(ModelLoadFailed) as failed:
        probe.check("corrupt", adapter_for("sklearn"), path, timeout_s=60)
    assert not isinstance(failed.value, LoaderCrashed)
    assert failed.value.reason.startswith("ValueError: cannot unpickle model.joblib")
    assert probe.workers() == []  # the worker lived, and ended with its trial all the same


def _trial_in_flight(
    probe: LoadProbe, pool: ThreadPoolExecutor, path: Path, timeout_s: float
) -> tuple[Future[None], int]:
    """A trial of ``path`` started on ``pool``, and its worker's pid once the worker is up."""
    trial = pool.submit(probe.check, path.parent.name, adapter_for("sklearn"), path, timeout_s=timeout_s)
    wait_until(lambda: bool(probe.workers()) or trial.done(), within_s=60, what="the trial's worker starting")
    (worker,) = probe.workers()
    return trial, worker


def test_a_load_past_its_timeout_kills_the_worker(probe: LoadProbe, tmp_path: Path) -> None:
    path = _dump(tmp_path / "slow", _Sleep())
    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        trial, worker = _trial_in_flight(probe, pool, path, timeout_s=2)
        with pytest.raises(TimeoutError):
            trial.result(timeout=60)
    assert time.monotonic() - started < 30
    assert probe.workers() == [] and not _alive(worker)


def test_an_artifact_that_passed_is_not_tried_again_until_it_changes(
    probe: LoadProbe, tmp_path: Path
) -> None:
    path = samples.sklearn_classifier(tmp_path / "m")
    adapter = adapter_for("sklearn")
    probe.check("m", adapter, path, timeout_s=60)
    probe.stop()  # no trial can run now: a file that passed needs none
    probe.check("m", adapter, path.parent, timeout_s=60)
    samples.poison_pickle(path.parent)  # the same file, rewritten: tried again (and refused)
    with pytest.raises(ModelLoadFailed, match="stopping"):
        probe.check("m", adapter, path, timeout_s=60)


def _fork_server_children() -> list[psutil.Process]:
    """The worker processes alive now (of every probe in this process: they share a fork server)."""
    servers = [c for c in psutil.Process().children() if "forkserver" in " ".join(c.cmdline())]
    return [w for s in servers for w in s.children() if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]


def test_stop_ends_every_worker(tmp_path: Path) -> None:
    probe = LoadProbe(workers=2)
    with ThreadPoolExecutor(1) as pool:
        trial, worker = _trial_in_flight(probe, pool, _dump(tmp_path / "slow", _Sleep()), timeout_s=60)
        wait_until(lambda: len(_fork_server_children()) == 2, within_s=60, what="a spare worker")
        probe.stop()
        with pytest.raises(Unavailable, match="stopping"):  # cut off: no crash of the model
            trial.result(timeout=60)
    assert not _alive(worker)
    wait_until(lambda: not _fork_server_children(), within_s=10, what="every worker ending")
    with pytest.raises(ModelLoadFailed, match="stopping"):
        probe.check("n", adapter_for("sklearn"), samples.sklearn_classifier(tmp_path / "n"), timeout_s=60)


def test_a_model_whose_calls_kill_their_process_fails_its_trial_call(
    probe: LoadProbe, tmp_path: Path
) -> None:
    path = samples.poison_estimator(tmp_path / "calls", exit_code=5)
    with pytest.raises(LoaderCrashed) as failed:
        probe.check("calls", adapter_for("sklearn"), path, timeout_s=60)
    died = "the loader process died while running model.joblib once on zeros: exit code 5"
    assert failed.value.reason == died


def test_an_artifact_cannot_get_the_next_one_blamed(probe: LoadProbe, tmp_path: Path) -> None:
    """Each trial runs in a process of its own: what one artifact did to its loader (here, a
    ``joblib.load`` that kills the process) is gone before the next trial."""
    sabotage = _dump(tmp_path / "sabotage", _Sabotage())
    adapter = adapter_for("sklearn")
    with pytest.raises(ModelLoadFailed) as failed:
        probe.check("sabotage", adapter, sabotage, timeout_s=60)
    assert not isinstance(failed.value, LoaderCrashed)
    probe.check("good", adapter, samples.sklearn_classifier(tmp_path / "good"), timeout_s=60)
