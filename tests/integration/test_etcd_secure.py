"""Pods on an etcd as production runs it: user/password authentication with a role limited to the
root prefix, TLS with client certificates, several endpoints; configured through ModelMesh's
``etcd_connection`` JSON exactly as the chart mounts it."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mesh.registry.etcd import EtcdRegistry
from mesh.registry.etcd_config import EtcdConnection
from mesh_common.errors import Unavailable
from mesh_proto import etcd_pb2 as pb
from mesh_proto import etcd_pb2_grpc as pb_grpc
from mesh_proto import model_mesh_pb2_grpc as mm_grpc
from mesh_tools.etcd_process import EtcdProcess, EtcdTls, etcd_binary, free_port
from tests.conftest import ModelSet, PodThread, pod_settings, register, wait_until

PASSWORD = "mesh-pw-7f3a"  # must never appear in a message
ROOT_PASSWORD = "root-pw-91c2"


def etcdctl(etcd: EtcdProcess, *args: str, user: str | None = None, stdin: str | None = None) -> str:
    command = [str(Path(etcd_binary()).parent / "etcdctl"), f"--endpoints={etcd.url}", *args]
    if user:
        command.append(f"--user={user}")
    done = subprocess.run(command, capture_output=True, text=True, input=stdin, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def auth_etcd(tmp_path: Path) -> Iterator[EtcdProcess]:
    """An etcd with authentication on; user ``mesh`` may read and write under ``team-a/`` only."""
    with EtcdProcess(tmp_path / "etcd") as etcd:
        etcdctl(etcd, "user", "add", f"root:{ROOT_PASSWORD}")
        etcdctl(etcd, "user", "grant-role", "root", "root")
        etcdctl(etcd, "role", "add", "mesh")
        etcdctl(etcd, "role", "grant-permission", "mesh", "--prefix=true", "readwrite", "team-a/")
        etcdctl(etcd, "user", "add", f"mesh:{PASSWORD}")
        etcdctl(etcd, "user", "grant-role", "mesh", "mesh")
        etcdctl(etcd, "auth", "enable")
        yield etcd


def connection_file(tmp_path: Path, **fields: str) -> Path:
    path = tmp_path / "etcd_connection"
    path.write_text(json.dumps(fields))
    return path


def test_a_pod_authenticates_keeps_its_keys_under_the_root_prefix_and_renews_its_token(
    auth_etcd: EtcdProcess, tmp_path: Path, models: ModelSet
) -> None:
    config = connection_file(
        tmp_path, endpoints=auth_etcd.url, userid="mesh", password=PASSWORD, root_prefix="team-a"
    )
    registry = EtcdRegistry(EtcdConnection.from_file(config))
    with (
        PodThread(pod_settings(namespace="auth"), registry=registry) as pod,
        grpc.insecure_channel(pod.target) as channel,
    ):
        api = mm_grpc.ModelMeshStub(channel)
        register(api, "iris", "sklearn", models.sklearn)
        stored = etcdctl(auth_etcd, "get", "--prefix", "--keys-only", "team-a/", user=f"root:{ROOT_PASSWORD}")
        assert "team-a/mesh/auth/models/iris" in stored.split()
        assert registry.authentications == 1
        # A password change (here to the same one) makes etcd drop the user's tokens: the pod
        # authenticates again on its next call, and the call succeeds.
        etcdctl(
            auth_etcd,
            "user",
            "passwd",
            "mesh",
            "--interactive=false",
            user=f"root:{ROOT_PASSWORD}",
            stdin=PASSWORD,
        )
        register(api, "iris-2", "sklearn", models.sklearn)
        assert registry.authentications >= 2
        assert (
            "team-a/mesh/auth/models/iris-2"
            in etcdctl(
                auth_etcd, "get", "--prefix", "--keys-only", "team-a/", user=f"root:{ROOT_PASSWORD}"
            ).split()
        )


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mesh_tools.cli", "serve", "--port", "0", "--metrics-port", "-1", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_wrong_password_stops_mesh_serve_with_a_clear_error(auth_etcd: EtcdProcess, tmp_path: Path) -> None:
    wrong = "not-the-" + PASSWORD
    config = connection_file(
        tmp_path, endpoints=auth_etcd.url, userid="mesh", password=wrong, root_prefix="team-a"
    )
    done = serve("--etcd-config", str(config))
    assert done.returncode == 1
    assert "refused user 'mesh'" in done.stderr and "authentication failed" in done.stderr
    assert str(config) in done.stderr
    assert wrong not in done.stderr and PASSWORD not in done.stderr


def test_bad_etcd_config_and_both_sources_are_refused_by_mesh_serve(tmp_path: Path) -> None:
    config = connection_file(
        tmp_path, endpoints="127.0.0.1:2379", userid="mesh", password=PASSWORD, prefix="x"
    )
    done = serve("--etcd-config", str(config))
    assert done.returncode == 2
    assert "unknown field 'prefix'" in done.stderr and str(config) in done.stderr
    assert PASSWORD not in done.stderr
    (tmp_path / "broken").write_text('{"endpoints": "127.0.0.1:2379", "password": "' + PASSWORD + '"')
    done = serve("--etcd-config", str(tmp_path / "broken"))
    assert done.returncode == 2 and "not valid JSON" in done.stderr and PASSWORD not in done.stderr
    done = serve("--etcd-config", str(config), "--etcd", "127.0.0.1:2379")
    assert done.returncode == 2 and "not both" in done.stderr


def _certificates(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files (PKCS8 keys)."""
    now = datetime.datetime.now(datetime.UTC)

    def issue(
        name: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: x509.Name,
        signer: ec.EllipticCurvePrivateKey,
        *,
        ca: bool = False,
        ip: bool = False,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ip:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mesh-test-ca")])
    ca = issue("mesh-test-ca", ca_key, ca_name, ca_key, ca=True)
    files: dict[str, Path] = {}
    for name, cert, key in (
        ("ca", ca, ca_key),
        (
            "server",
            issue("etcd", (k := ec.generate_private_key(ec.SECP256R1())), ca_name, ca_key, ip=True),
            k,
        ),
        ("client", issue("mesh", (c := ec.generate_private_key(ec.SECP256R1())), ca_name, ca_key), c),
    ):
        files[name] = directory / f"{name}.pem"
        files[name].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"{name}-key"] = directory / f"{name}-key.pem"
        files[f"{name}-key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return files


def test_a_pod_reaches_etcd_over_tls_with_a_client_certificate_past_a_dead_endpoint(
    tmp_path: Path, models: ModelSet
) -> None:
    pem = _certificates(tmp_path)
    tls = EtcdTls(pem["server"], pem["server-key"], pem["ca"], pem["client"], pem["client-key"])
    with EtcdProcess(tmp_path / "etcd", tls=tls) as etcd:
        dead = f"https://127.0.0.1:{free_port()}"  # nothing listens: calls move on to the next endpoint
        config = connection_file(
            tmp_path,
            endpoints=f"{dead},{etcd.url}",
            certificate_file="ca.pem",  # relative: beside the JSON file, as a mounted Secret has it
            client_key_file="client-key.pem",
            client_certificate=pem["client"].read_text(),
        )
        with (
            PodThread(pod_settings(namespace="tls", etcd_config=config)) as pod,
            grpc.insecure_channel(pod.target) as channel,
        ):
            api = mm_grpc.ModelMeshStub(channel)
            status = register(api, "iris", "sklearn", models.sklearn, load_now=True, sync=True)
            assert status.status == status.LOADED
            assert pod.pod.store.model("iris") is not None  # the mirror's watch runs over TLS too
        # Without the client certificate, etcd refuses the handshake: the registry says so.
        plain = EtcdRegistry(
            EtcdConnection.from_file(connection_file(tmp_path, endpoints=etcd.url, certificate_file="ca.pem"))
        )

        async def read() -> None:
            try:
                await plain.range("/mesh/")
            finally:
                await plain.close()

        with pytest.raises(Unavailable, match=r"etcd at https://127\.0\.0\.1:\d+\) is unreachable"):
            asyncio.run(read())


def test_credentials_for_an_etcd_without_authentication_are_not_needed(
    etcd: EtcdProcess, tmp_path: Path
) -> None:
    config = connection_file(
        tmp_path, endpoints=etcd.url, userid="mesh", password=PASSWORD, root_prefix="noauth"
    )
    registry = EtcdRegistry(EtcdConnection.from_file(config))

    async def round_trip() -> list[str]:
        try:
            await registry.put("/mesh/x/models/m", b"{}")
            entries, _ = await registry.range("/mesh/x/")
            return [e.key for e in entries]
        finally:
            await registry.close()

    assert asyncio.run(round_trip()) == ["/mesh/x/models/m"]
    assert registry.authentications == 0


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[list[tuple[subprocess.Popen[bytes], str]]]:
    """Three etcd members on loopback: (process, client URL) each."""
    clients, peers = [free_port() for _ in range(3)], [free_port() for _ in range(3)]
    cluster = ",".join(f"m{i}=http://127.0.0.1:{peers[i]}" for i in range(3))
    members = [
        subprocess.Popen(
            [
                etcd_binary(),
                f"--name=m{i}",
                f"--data-dir={tmp_path / f'm{i}'}",
                f"--listen-client-urls=http://127.0.0.1:{clients[i]}",
                f"--advertise-client-urls=http://127.0.0.1:{clients[i]}",
                f"--listen-peer-urls=http://127.0.0.1:{peers[i]}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peers[i]}",
                f"--initial-cluster={cluster}",
                "--initial-cluster-state=new",
                "--listen-metrics-urls=",
                "--log-level=error",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(3)
    ]
    try:
        for port in clients:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                grpc.channel_ready_future(channel).result(timeout=20)
                pb_grpc.KVStub(channel).Range(pb.RangeRequest(key=b"/"), timeout=20, wait_for_ready=True)
        yield [(member, f"http://127.0.0.1:{port}") for member, port in zip(members, clients, strict=True)]
    finally:
        for member in members:
            member.terminate()
        for member in members:
            member.wait(timeout=10)


def test_calls_fail_over_to_the_next_member_when_one_dies(
    etcd_cluster: list[tuple[subprocess.Popen[bytes], str]], tmp_path: Path, models: ModelSet
) -> None:
    config = connection_file(tmp_path, endpoints=",".join(url for _, url in etcd_cluster))
    with (
        PodThread(pod_settings(namespace="failover", etcd_config=config)) as pod,
        grpc.insecure_channel(pod.target) as channel,
    ):
        api = mm_grpc.ModelMeshStub(channel)
        register(api, "before", "sklearn", models.sklearn)
        first, _ = etcd_cluster[0]
        first.terminate()  # the member the pod's calls go to
        first.wait(timeout=10)
        # The write finds the member gone (connection refused) and goes to the next one.
        status = register(api, "after", "sklearn", models.sklearn)
        assert status.status == status.NOT_LOADED
        wait_until(
            lambda: pod.pod.store.model("after") is not None, within_s=15, what="the mirror's watch resuming"
        )
