"""The puller against gcp-storage-emulator (GCS) and a loopback HTTP file server."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mesh.errors import ArtifactAccessDenied, ArtifactCorrupt, ArtifactNotFound
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
