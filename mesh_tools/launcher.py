"""Starting ``mesh serve`` as a child process on a free loopback port (demo, benchmarks, tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO


def spawn_pod(
    workdir: Path,
    *serve_args: str,
    log: IO[bytes] | int = subprocess.DEVNULL,
    timeout_s: float = 60.0,
    env: Mapping[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """Run ``mesh serve --port 0 ...`` and return the process and its ``127.0.0.1:PORT``.

    The pod writes its bound port to a file in ``workdir`` once it serves.
    """
    port_file = workdir / f"pod-{time.monotonic_ns()}.port"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mesh_tools.cli",
            "serve",
            "--port",
            "0",
            "--port-file",
            str(port_file),
            *serve_args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
        env=None if env is None else {**os.environ, **env},
    )
    deadline = time.monotonic() + timeout_s
    while not (port_file.exists() and port_file.read_text().strip()):
        if process.poll() is not None:
            raise RuntimeError(f"mesh serve exited with {process.returncode}")
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise RuntimeError(f"mesh serve did not start within {timeout_s:g}s")
        time.sleep(0.05)
    return process, f"127.0.0.1:{port_file.read_text().strip()}"


def stop_pod(process: subprocess.Popen[bytes], *, timeout_s: float = 30.0) -> None:
    """Stop a pod ``spawn_pod`` started: SIGTERM (its graceful stop), then SIGKILL if it hangs."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
