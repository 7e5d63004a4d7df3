"""Trial loads, in a worker process, of artifacts whose loading runs code (pickle, joblib).

Unpickling runs whatever the pickle names: an artifact whose loading calls ``os._exit``,
aborts, crashes a C extension or is killed by the OOM killer would take the pod down, and every
model it serves with it. ``LoadProbe.check`` loads such an artifact in a worker process first:
if the worker dies, the load fails with ``LoaderCrashed`` naming how (``exit code 3``, ``killed
by SIGSEGV``) and the pod serves on. Only then does the pod load it itself. The worker also runs
the loaded model once on a row of zeros (when its signature gives every input's shape): a model
whose every call kills its process fails the same way. An error from that call is ignored (zeros
may be no valid input); only a death counts. A model that dies only on some inputs is not caught.

Each trial has a worker of its own, forked from multiprocessing's fork server (which imports the
adapters once), started ahead of the trial as a spare, and killed when the trial ends: an
artifact's code can change its process (patch ``joblib.load`` to exit, leave threads or handlers
behind), and a reused worker would carry that into the next artifact's trial and get that one
blamed. Killing it also gives its memory back before the pod loads the model itself. (Each worker
runs the program's main module again, as multiprocessing does: a program that runs a pod must
guard its entry point with ``if __name__ == "__main__"``; ``mesh serve`` and pytest do.)

The worker answers in plain bytes (the load's error text, or nothing): the pod unpickles nothing
the worker sends. A worker that dies before it is ready says nothing about the artifact: that is
``Unavailable``, not a crash. A trial costs about the load's own time again (plus the imports the
artifact needs beyond ``PRELOAD``), paid once per artifact file: a file that passed is not tried
again while its size and mtime stay. ONNX and TorchScript files are parsed, not executed, on load:
their adapters are not tried first.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import signal
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

import numpy as np

from adapters.artifacts import find_artifact
from adapters.base import LoadedModel, ModelAdapter
from adapters.datatypes import V2_TO_NUMPY
from mesh_common.errors import LoaderCrashed, ModelLoadFailed, Unavailable

log = logging.getLogger(__name__)

PRELOAD = ("adapters.sklearn", "sklearn.linear_model", "sklearn.ensemble")
"""Modules the fork server imports once (sklearn's core with its most used estimators: linear
models, trees and forests), so a worker starts in milliseconds; other estimators' modules are
imported by each worker that needs them."""
_STOP_S = 5.0
_START_S = 60.0
"""How long a new worker may take to say it is ready (the first also starts the fork server)."""
_READY = b"ready"
_LOADED = b"+"
"""A worker's first answer when the load worked; its second follows the trial call."""
_MAX_ERROR = 4000
"""Characters of a load's error text a worker sends back."""


class LoadProbe:
    """Loads artifacts in worker processes before the pod does. Thread-safe: loads call ``check``
    from the pod's load threads, at most ``workers`` at once, each trial in a new worker."""

    def __init__(self, *, workers: int, preload: Sequence[str] = ()) -> None:
        """``preload``: modules beyond ``PRELOAD`` for the fork server to import once, such as those
        the program's main module imports (each worker runs it again)."""
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload([*PRELOAD, *preload])
        self._busy: set[_Worker] = set()
        self._spare: _Worker | None = None
        """A worker started ahead of the next trial, that has run none (its start is off the
        trial's path: a fork, and the program's main module run again, as multiprocessing does)."""
        self._starting: threading.Thread | None = None
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(workers)
        self._passed: set[tuple[str, int, int]] = set()
        self._stopped = False

    def check(self, model_id: str, adapter: ModelAdapter, path: Path, *, timeout_s: float) -> None:
        """Load ``path`` with ``adapter`` (the worker's own instance of it) in a new worker process,
        which is gone when this returns; blocks.

        Raises:
            LoaderCrashed: the worker died while loading it.
            ModelLoadFailed: the load raised (its message, as a load in the pod would give it).
            TimeoutError: no answer within ``timeout_s``.
            Unavailable: no worker process could be started, or ``stop`` ended it (nothing is known
                of the artifact).
        """
        artifact = find_artifact(path, adapter.suffixes)
        stat = artifact.stat()
        key = (str(artifact.resolve()), stat.st_size, stat.st_mtime_ns)
        if key in self._passed:
            return
        with self._slots:
            worker = self._start(model_id)
            try:
                error = worker.load(adapter.model_type, path, timeout_s)
            except _Died as died:
                if self._stopped:  # ``stop`` killed it: nothing is known of the artifact
                    raise Unavailable("the pod is stopping: the trial load was cut off") from None
                log.warning("the loader process died trying %s (%s): %s", model_id, artifact.name, died)
                doing = (
                    f"running {artifact.name} once on zeros" if died.loaded else f"loading {artifact.name}"
                )
                reason = f"the loader process died while {doing}: {died}"
                raise LoaderCrashed(model_id=model_id, reason=reason) from None
            finally:
                self._end(worker)
        if error is not None:
            raise ModelLoadFailed(model_id=model_id, reason=error)
        self._passed.add(key)

    def workers(self) -> list[int]:
        """The pids of the worker processes running a trial now (not the spare)."""
        with self._lock:
            return [w.pid for w in self._busy if w.alive()]

    def stop(self) -> None:
        """End every worker (trials in flight fail); a later ``check`` fails. Blocks up to a few seconds."""
        with self._lock:
            self._stopped = True
            workers = [*self._busy, *([self._spare] if self._spare is not None else [])]
            self._spare = None
            starting = self._starting
        for worker in workers:
            worker.kill()
        if starting is not None:
            starting.join()  # it ends the worker it started: the probe is stopped

    def _start(self, model_id: str) -> _Worker:
        """The spare worker, or a new one; starts the next spare."""
        with self._lock:
            if self._stopped:
                raise ModelLoadFailed(model_id=model_id, reason="the pod is stopping")
            worker, self._spare = self._spare, None
        if worker is None or not worker.alive():
            if worker is not None:
                worker.kill()
            worker = _Worker.start(self._context)
        with self._lock:
            self._busy.add(worker)
            stopped = self._stopped
            if not stopped and (self._starting is None or not self._starting.is_alive()):
                self._starting = threading.Thread(target=self._start_spare, name="mesh-load-probe-spare")
                self._starting.start()
        if stopped:  # ``stop`` ran while it started
            self._end(worker)
            raise ModelLoadFailed(model_id=model_id, reason="the pod is stopping")
        return worker

    def _start_spare(self) -> None:
        try:
            worker = _Worker.start(self._context)
        except Unavailable as exc:  # the next trial starts its own, and says why if it cannot
            log.warning("no spare loader process: %s", exc.message)
            return
        with self._lock:
            if not self._stopped and self._spare is None:
                self._spare, worker = worker, None  # type: ignore[assignment]
        if worker is not None:
            worker.kill()

    def _end(self, worker: _Worker) -> None:
        with self._lock:
            self._busy.discard(worker)
        worker.kill()


class _Died(Exception):
    """The worker process died; the message says how. ``loaded``: after the load, in the trial call."""

    def __init__(self, how: str, *, loaded: bool) -> None:
        super().__init__(how)
        self.loaded = loaded


class _Worker:
    def __init__(self, process: BaseProcess, connection: Connection) -> None:
        self._process = process
        self._connection = connection
        self.pid = process.pid or 0

    @classmethod
    def start(cls, context: multiprocessing.context.ForkServerContext) -> _Worker:
        """A new worker, once it said it is ready; ``Unavailable`` if it did not."""
        ours, theirs = context.Pipe()
        process = context.Process(target=_serve, args=(theirs,), name="mesh-load-probe", daemon=True)
        process.start()
        theirs.close()
        worker = cls(process, ours)
        try:
            if ours.poll(_START_S) and ours.recv_bytes(len(_READY)) == _READY:
                return worker
        except (EOFError, OSError):
            pass
        worker.stop()
        raise Unavailable(f"the loader process could not start: {worker._death()}")

    def alive(self) -> bool:
        return self._process.is_alive()

    def load(self, model_type: str, path: Path, timeout_s: float) -> str | None:
        """The load's error, or None; raises ``_Died`` or ``TimeoutError``."""
        deadline = time.monotonic() + timeout_s
        loaded = False
        try:
            self._connection.send_bytes(json.dumps([model_type, str(path)]).encode())
            while self._connection.poll(max(deadline - time.monotonic(), 0.0)):
                answer = self._connection.recv_bytes(4 * _MAX_ERROR)
                if answer == _LOADED:
                    loaded = True
                    continue
                return answer.decode("utf-8", "replace") if answer else None
        except (EOFError, OSError):
            self._process.join(_STOP_S)
            raise _Died(self._death(), loaded=loaded) from None
        raise TimeoutError(f"no answer from the loader process within {timeout_s:g}s")

    def _death(self) -> str:
        code = self._process.exitcode
        if code is None:
            return "its connection closed"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"

    def stop(self) -> None:
        self._connection.close()  # a worker waiting for work reads EOF and exits
        self._process.join(0.5)
        self.kill()

    def kill(self) -> None:
        """End it now (SIGKILL: nothing the artifact left in it runs), and reap it."""
        self._connection.close()
        if self._process.is_alive():
            self._process.kill()
        self._process.join(_STOP_S)


def _serve(connection: Connection) -> None:
    """The worker: load what the pod sends, answer the error text or None, until the pod hangs up."""
    from adapters import adapter_for

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the pod decides when its workers end
    connection.send_bytes(_READY)
    while True:
        try:
            model_type, path = json.loads(connection.recv_bytes())
        except (EOFError, OSError):
            return
        try:
            model = adapter_for(model_type).load(Path(path))
        except Exception as exc:  # the error's text only: objects from the artifact stay here
            connection.send_bytes(f"{type(exc).__name__}: {exc}"[:_MAX_ERROR].encode("utf-8", "replace"))
            continue
        connection.send_bytes(_LOADED)
        zeros = _zeros(model)
        if zeros is not None:
            with contextlib.suppress(Exception):  # zeros may be no valid input: only a death counts
                model.infer(zeros, ())
        del model
        connection.send_bytes(b"")


def _zeros(model: LoadedModel) -> dict[str, np.ndarray] | None:
    """One row of zeros per input, when the signature gives every input's shape and a numeric type."""
    inputs = {}
    for spec in model.signature.inputs:
        if spec.shape is None or spec.datatype not in V2_TO_NUMPY or spec.datatype == "BYTES":
            return None
        shape = tuple(1 if size < 0 else size for size in spec.shape)
        inputs[spec.name] = np.zeros(shape, dtype=V2_TO_NUMPY[spec.datatype])
    return inputs or None
