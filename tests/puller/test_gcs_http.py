"""The puller against gcp-storage-emulator (GCS) and a loopback HTTP file server."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mesh_common.errors import ArtifactAccessDenied, ArtifactCorrupt, ArtifactNotFound, Unavailable
from tests.puller.test_s3 import Puller, make_puller
from tests.storage_servers import GcsServer, HttpFileServer


@pytest.fixture
def gcs_bucket(gcs_server: GcsServer) -> str:
    name = f"models-{uuid.uuid4().hex[:10]}"
    gcs_server.client().create_bucket(name)
    return name


@pytest.fixture
async def puller(tmp_path: Path) -> AsyncIterator[Puller]:
    made = await make_puller(
        tmp_path, {"web": {"type": "http", "headers": {"Authorization": "Bearer tok-123456"}}}
    )
    yield made
    await made.cache.close()
    made.table.close()


async def test_gcs_file_prefix_and_chunked_large_object(
    puller: Puller, gcs_server: GcsServer, gcs_bucket: str
) -> None:
    bucket = gcs_server.client().bucket(gcs_bucket)
    big = os.urandom(20 << 20)
    bucket.blob("m/model.onnx").upload_from_string(b"onnx bytes")
    bucket.blob("tree/1/model.pt").upload_from_string(b"torch bytes")
    bucket.blob("tree/big.bin").upload_from_string(big)
    single = await puller.fetch(f"gs://{gcs_bucket}/m/model.onnx")
    assert single.read_bytes() == b"onnx bytes"
    tree = await puller.fetch(f"gs://{gcs_bucket}/tree/")
    assert (tree / "1" / "model.pt").read_bytes() == b"torch bytes"
    assert hashlib.sha256((tree / "big.bin").read_bytes()).digest() == hashlib.sha256(big).digest()
    assert await puller.fetch(f"gs://{gcs_bucket}/m/model.onnx") == single
    assert puller.metric("mesh_artifact_cache_hits_total") == 1
    bucket.blob("m/model.onnx").upload_from_string(b"new generation")
    assert (await puller.fetch(f"gs://{gcs_bucket}/m/model.onnx")).read_bytes() == b"new generation"


async def test_gcs_missing_object_is_not_found(puller: Puller, gcs_bucket: str) -> None:
    with pytest.raises(ArtifactNotFound, match=f"not found: gs://{gcs_bucket}/absent.onnx"):
        await puller.fetch(f"gs://{gcs_bucket}/absent.onnx")


async def test_http_sends_configured_headers_and_caches(puller: Puller, http_files: HttpFileServer) -> None:
    http_files.required_header = ("Authorization", "Bearer tok-123456")
    url = http_files.put("models/m.joblib", b"joblib over http")
    path = await puller.fetch(url, storage_key="web")
    assert path.name == "m.joblib" and path.read_bytes() == b"joblib over http"
    assert await puller.fetch(url, storage_key="web") == path
    assert http_files.gets["models/m.joblib"] == 1


async def test_http_refusals_name_the_url_but_never_the_token(
    puller: Puller, http_files: HttpFileServer
) -> None:
    http_files.required_header = ("Authorization", "Bearer another-token")
    url = http_files.put("m.joblib", b"x")
    with pytest.raises(ArtifactAccessDenied, match="permission denied") as caught:
        await puller.fetch(url, storage_key="web")
    assert url in str(caught.value) and "tok-123456" not in str(caught.value)
    http_files.required_header = None
    with pytest.raises(ArtifactNotFound, match=f"not found: {http_files.url}/absent"):
        await puller.fetch(f"{http_files.url}/absent", storage_key="web")


async def test_http_cut_download_retries_and_corrupt_one_is_refused(
    puller: Puller, http_files: HttpFileServer
) -> None:
    data = os.urandom(2 << 20)
    url = http_files.put("cut.bin", data)
    http_files.faults.cut["cut.bin"] = 1
    assert (await puller.fetch(url, storage_key="web")).read_bytes() == data
    assert http_files.gets["cut.bin"] == 2
    bad = http_files.put("bad.bin", os.urandom(1 << 20))
    http_files.faults.corrupt["bad.bin"] = 1
    with pytest.raises(ArtifactCorrupt, match="Content-MD5"):
        await puller.fetch(bad, storage_key="web")
    assert not puller.cache.cached(bad)


def _certificates(tmp: Path) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all PEM."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("mesh test CA"))
        .issuer_name(name("mesh test CA"))
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(common: str, serial: int, san: x509.SubjectAlternativeName | None) -> tuple[str, str]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
        )
        if san is not None:
            builder = builder.add_extension(san, critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem.decode()

    server_cert, server_key = leaf(
        "127.0.0.1", 2, x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    )
    client_cert, client_key = leaf("mesh pod", 3, None)
    return {
        "ca": ca.public_bytes(serialization.Encoding.PEM).decode(),
        "server_cert": server_cert,
        "server_key": server_key,
        "client_cert": client_cert,
        "client_key": client_key,
    }


async def test_https_with_a_private_ca_and_a_client_certificate(tmp_path: Path) -> None:
    import ssl

    pem = _certificates(tmp_path)
    (tmp_path / "server.pem").write_text(pem["server_cert"])
    (tmp_path / "server.key").write_text(pem["server_key"])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "server.pem", tmp_path / "server.key")
    context.load_verify_locations(cadata=pem["ca"])
    context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: no client certificate, no answer
    with HttpFileServer(tls=context) as server:
        url = server.put("secure/m.joblib", b"over mutual TLS")
        entry = {
            "type": "http",
            "certificate": pem["ca"],
            "client_certificate": pem["client_cert"],
            "client_key": pem["client_key"],
        }
        made = await make_puller(
            tmp_path, {"tls": entry, "no-client": {"type": "http", "certificate": pem["ca"]}}
        )
        try:
            assert url.startswith("https://")
            assert (await made.fetch(url, storage_key="tls")).read_bytes() == b"over mutual TLS"
            with pytest.raises(Unavailable, match="storage unreachable"):
                await made.fetch(server.put("secure/other.joblib", b"x"), storage_key="no-client")
        finally:
            await made.cache.close()
