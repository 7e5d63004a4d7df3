"""What loading pickles in a worker process first costs (``adapters.probe``), against the load itself.

For a small LogisticRegression and random forests of about 15 MB and 45 MB: the pod's own load
(in this process) and the trial load (each in a new worker), as medians of ``--rounds`` runs, and their
ratio; the first trial (it starts the fork server); the worker's and fork server's memory; and,
for the alternative of serving sklearn models from a worker process, the cost per call of a pipe
round trip to a worker against calling ``predict`` here.

    python bench/trial_load.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

import joblib
import numpy as np
import psutil

from adapters import ModelAdapter, adapter_for
from adapters.probe import LoadProbe
from mesh_tools import samples


def _forest(directory: Path, rows: int) -> Path:
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(0)
    data, labels = rng.normal(size=(rows, 20)), rng.integers(0, 5, rows)
    directory.mkdir(parents=True)
    path = directory / "model.joblib"
    joblib.dump(RandomForestClassifier(n_estimators=60, random_state=0).fit(data, labels), path)
    return path


def _median_ms(run: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def _serve(connection: Connection, path: str) -> None:
    model = joblib.load(path)
    while True:
        try:
            raw = connection.recv_bytes()
        except EOFError:
            return
        rows = np.frombuffer(raw, dtype=np.float64).reshape(-1, 4)
        connection.send_bytes(model.predict(rows).astype(np.int64).tobytes())


def _worker_memory(probe: LoadProbe, adapter: ModelAdapter, path: Path) -> tuple[float, float]:
    """The most memory (MiB resident, MiB its own) a trial's worker is seen to hold while it tries
    ``path`` (each trial's worker ends with it: sampled from another thread)."""
    os.utime(path, ns=(time.time_ns(), time.time_ns()))
    trial = threading.Thread(target=probe.check, args=("memory", adapter, path), kwargs={"timeout_s": 120})
    trial.start()
    rss = uss = 0.0
    while trial.is_alive():
        for pid in probe.workers():
            with contextlib.suppress(psutil.Error):
                info = psutil.Process(pid).memory_full_info()
                rss, uss = max(rss, info.rss / 2**20), max(uss, info.uss / 2**20)
        time.sleep(0.005)
    trial.join()
    return rss, uss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    adapter = adapter_for("sklearn")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = {
            "small": samples.sklearn_classifier(root / "small"),
            "forest-4k": _forest(root / "forest-4k", 4000),
            "forest-12k": _forest(root / "forest-12k", 12000),
        }
        probe = LoadProbe(workers=1)
        started = time.perf_counter()
        probe.check("warm-up", adapter, models["small"], timeout_s=120)
        first_ms = (time.perf_counter() - started) * 1000
        print(f"first trial (starts the fork server and a worker): {first_ms:.0f} ms")
        print(f"{'model':12s} {'MB':>6s} {'load ms':>9s} {'trial ms':>9s} {'trial/load':>10s}")
        for name, path in models.items():

            def trial(name: str = name, path: Path = path) -> None:
                os.utime(path, ns=(time.time_ns(), time.time_ns()))  # a changed file is tried again
                probe.check(name, adapter, path, timeout_s=120)

            load_ms = _median_ms(lambda path=path: adapter.load(path), rounds)
            trial_ms = _median_ms(trial, rounds)
            size_mb = path.stat().st_size / 1e6
            print(f"{name:12s} {size_mb:6.1f} {load_ms:9.1f} {trial_ms:9.1f} {trial_ms / load_ms:10.2f}")
        worker_rss, worker_uss = _worker_memory(probe, adapter, models["forest-12k"])
        print(
            f"worker (largest seen, trying forest-12k): {worker_rss:.0f} MiB resident, "
            f"{worker_uss:.0f} MiB its own"
        )
        (server,) = [c for c in psutil.Process().children() if "forkserver" in " ".join(c.cmdline())]
        info = server.memory_full_info()
        print(f"fork server: {info.rss / 2**20:.0f} MiB resident, {info.uss / 2**20:.0f} MiB its own")
        probe.stop()

        model = joblib.load(models["small"])
        row = np.array([[5.1, 3.5, 1.4, 0.2]])
        calls = 5000
        here_us = _median_ms(lambda: [model.predict(row) for _ in range(calls)], rounds) * 1000 / calls
        context = multiprocessing.get_context("forkserver")
        ours, theirs = context.Pipe()
        server_process = context.Process(target=_serve, args=(theirs, str(models["small"])), daemon=True)
        server_process.start()
        payload = row.tobytes()

        def through_worker() -> None:
            for _ in range(calls):
                ours.send_bytes(payload)
                ours.recv_bytes()

        through_worker()
        worker_us = _median_ms(through_worker, rounds) * 1000 / calls
        ours.close()
        server_process.join(5)
        print(
            f"predict, one row: {here_us:.0f} us per call here, {worker_us:.0f} us through a worker "
            f"process (+{worker_us - here_us:.0f} us, {worker_us / here_us:.2f}x)"
        )


if __name__ == "__main__":
    main()
