"""``mesh serve`` configured only through ``MESH_*`` variables, as the Helm chart runs it in a pod:
bound on every address, named and advertised from the downward API, capacity from the memory
limit, and a graceful stop on SIGTERM."""

from __future__ import annotations

import signal
import socket
import time
import urllib.request
from pathlib import Path

import psutil

from mesh.edge.client import MeshClient
from mesh_tools.etcd_process import EtcdProcess, free_port
from mesh_tools.launcher import spawn_pod


def listening_addresses(pid: int, port: int) -> set[str]:
    return {
        c.laddr.ip
        for c in psutil.Process(pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    }


def ipv6_available() -> bool:
    """Whether this host can bind the IPv6 wildcard (gRPC then listens there for 0.0.0.0)."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::", 0))
    except OSError:
        return False
    return True


def test_serve_from_environment_binds_all_addresses_and_stops_gracefully(
    tmp_path: Path, etcd: EtcdProcess
) -> None:
    metrics_port = free_port()
    log_path = tmp_path / "pod.log"
    with log_path.open("wb") as log:
        process, target = spawn_pod(
            tmp_path,
            log=log,
            env={
                "MESH_HOST": "0.0.0.0",
                "MESH_METRICS_PORT": str(metrics_port),
                "MESH_POD_ID": "mesh-7d9f-abcde",  # metadata.name
                "MESH_ADVERTISE_HOST": "127.0.0.1",  # status.podIP
                "MESH_MEMORY_LIMIT": "536870912",  # limits.memory, in bytes
                "MESH_CAPACITY_FRACTION": "0.25",
                "MESH_ETCD": etcd.endpoint,
                "MESH_NAMESPACE": "as-a-pod",
                "MESH_HANDOFF_TIMEOUT_S": "3",
            },
        )
    try:
        port = int(target.rpartition(":")[2])
        # The wildcard: gRPC takes 0.0.0.0 as dual-stack :: where the host has IPv6; the metrics
        # server binds the IPv4 wildcard it is given.
        wildcard = "::" if ipv6_available() else "0.0.0.0"
        assert listening_addresses(process.pid, port) == {wildcard}
        assert listening_addresses(process.pid, metrics_port) == {"0.0.0.0"}
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as answer:
            assert b"mesh_cache_pressure" in answer.read()
        with MeshClient(target) as client:
            assert client.pod_status().capacity_bytes == 128 * 2**20  # 512 MiB x 0.25
            (pod,) = client.fleet_status().pods
            assert (pod.pod_id, pod.endpoint) == ("mesh-7d9f-abcde", f"127.0.0.1:{port}")
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=3 + 5 + 25) == 0  # handoff_timeout_s + stop_grace_s + registry writes
        assert time.monotonic() - started < 3 + 5 + 25
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "stopping" in log_path.read_text()
