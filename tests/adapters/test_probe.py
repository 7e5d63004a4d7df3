"""Trial loads in a worker process: an artifact that kills its loader fails its load, named for
how the loader died, and the process that asked lives on; workers end with the probe."""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Iterator
from pathlib import Path

import joblib
import pytest

from adapters import adapter_for
from adapters.probe import LoadProbe
from mesh import samples
from mesh.errors import LoaderCrashed, ModelLoadFailed


class _Segfault:
    def __reduce__(self) -> tuple[object, tuple[int]]:
        return ctypes.string_at, (0,)  # reads address 0


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
    (first,) = probe.workers()
    with pytest.raises(LoaderCrashed) as failed:
        probe.check("poison", adapter, poison, timeout_s=60)
    assert failed.value.reason == "the loader process died while loading model.joblib: exit code 3"
    assert failed.value.model_id == "poison"
    assert probe.workers() == []  # the dead worker is gone, not kept
    with pytest.raises(LoaderCrashed):  # a failed artifact is tried again, never remembered as good
        probe.check("poison", adapter, poison.parent, timeout_s=60)
    other = samples.sklearn_classifier(tmp_path / "other", seed=1)
    probe.check("other", adapter, other, timeout_s=60)  # a new worker serves the next load
    assert probe.workers() != [first]


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
    assert len(probe.workers()) == 1  # the worker lived: it stays for the next load


def test_a_load_past_its_timeout_kills_the_worker(probe: LoadProbe, tmp_path: Path) -> None:
    path = _dump(tmp_path / "slow", _Sleep())
    probe.check("warm", adapter_for("sklearn"), samples.sklearn_classifier(tmp_path / "ok"), timeout_s=60)
    (worker,) = probe.workers()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        probe.check("slow", adapter_for("sklearn"), path, timeout_s=0.5)
    assert time.monotonic() - started < 10
    assert probe.workers() == [] and not _alive(worker)


def test_an_artifact_that_passed_is_not_tried_again_until_it_changes(
    probe: LoadProbe, tmp_path: Path
) -> None:
    path = samples.sklearn_classifier(tmp_path / "m")
    adapter = adapter_for("sklearn")
    probe.check("m", adapter, path, timeout_s=60)
    (worker,) = probe.workers()
    os.kill(worker, 9)  # a trial would need a new worker: none starts for a file that passed
    probe.check("m", adapter, path.parent, timeout_s=60)
    samples.poison_pickle(path.parent)  # the same file, rewritten: tried again
    with pytest.raises(LoaderCrashed):
        probe.check("m", adapter, path, timeout_s=60)


def test_stop_ends_every_worker(tmp_path: Path) -> None:
    probe = LoadProbe(workers=2)
    probe.check("m", adapter_for("sklearn"), samples.sklearn_classifier(tmp_path / "m"), timeout_s=60)
    (worker,) = probe.workers()
    probe.stop()
    assert not _alive(worker)
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
