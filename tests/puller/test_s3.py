"""The puller against moto's S3 in server mode: fetch, verify, cache, and every bad condition."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from mesh_common.errors import (
    ArtifactAccessDenied,
    ArtifactCorrupt,
    ArtifactNotFound,
    ArtifactTooLarge,
    Unavailable,
)
from puller import ArtifactCache, FetcherTable, storage_fetchers
from tests.storage_servers import SECRET_KEY, S3Server


@dataclass
class Puller:
    table: FetcherTable
    cache: ArtifactCache
    metrics: CollectorRegistry

    async def fetch(self, uri: str, **key: Any) -> Path:
        artifact = await self.table.fetch(uri, storage=key)
        artifact.loaded()
        return artifact.path

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics.get_sample_value(name, labels) or 0.0


async def make_puller(
    tmp: Path, storage: dict[str, Any], *, cache_bytes: int = 1 << 30, backoff_s: float = 0.05
) -> Puller:
    config = tmp / "storage-config.json"
    config.write_text(json.dumps(storage))
    metrics = CollectorRegistry()
    table, cache = storage_fetchers(
        cache_dir=tmp / "cache",
        cache_bytes=cache_bytes,
        storage_config=config,
        pvc_root=tmp / "pvc",
        metrics=metrics,
        concurrency=4,
        backoff_s=backoff_s,
    )
    await cache.start()
    return Puller(table, cache, metrics)


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    name = f"models-{uuid.uuid4().hex[:10]}"
    s3_server.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
async def puller(tmp_path: Path, s3_server: S3Server) -> AsyncIterator[Puller]:
    made = await make_puller(tmp_path, {"default": s3_server.storage_entry()})
    yield made
    await made.cache.close()
    made.table.close()


def put(server: S3Server, bucket: str, key: str, data: bytes, *, multipart: bool = False) -> None:
    client = server.client()
    if not multipart:
        client.put_object(Bucket=bucket, Key=key, Body=data)
        return
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)
    part_size = 5 << 20
    parts = []
    for number, start in enumerate(range(0, len(data), part_size), start=1):
        answer = client.upload_part(
            Bucket=bucket,
            Key=key,
            UploadId=upload["UploadId"],
            PartNumber=number,
            Body=data[start : start + part_size],
        )
        parts.append({"ETag": answer["ETag"], "PartNumber": number})
    client.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
    )


async def test_a_file_and_a_prefix_arrive_intact(puller: Puller, s3_server: S3Server, bucket: str) -> None:
    put(s3_server, bucket, "sk/model.joblib", b"joblib bytes")
    put(s3_server, bucket, "onnx/1/model.onnx", b"onnx bytes")
    put(s3_server, bucket, "onnx/config.pbtxt", b"config")
    single = await puller.fetch(f"s3://{bucket}/sk/model.joblib")
    assert single.name == "model.joblib" and single.read_bytes() == b"joblib bytes"
    tree = await puller.fetch(f"s3://{bucket}/onnx")
    assert (tree / "1" / "model.onnx").read_bytes() == b"onnx bytes"
    assert (tree / "config.pbtxt").read_bytes() == b"config"


@pytest.mark.parametrize("multipart", [True, False], ids=["by-part", "by-range"])
async def test_large_objects_download_in_parallel_and_verify(
    tmp_path: Path, s3_server: S3Server, bucket: str, multipart: bool
) -> None:
    data = os.urandom(23 << 20)  # more than one 16 MiB chunk
    put(s3_server, bucket, "big/weights.bin", data, multipart=multipart)
    made = await make_puller(tmp_path, {"default": s3_server.storage_entry()})
    try:
        path = await made.fetch(f"s3://{bucket}/big/weights.bin")
        assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest()
        assert s3_server.gets[f"{bucket}/big/weights.bin"] >= 2  # parts or ranges, not one stream
        assert made.metric("mesh_artifact_download_bytes_total") == len(data)
    finally:
        await made.cache.close()


async def test_a_second_fetch_is_a_cache_hit_and_a_new_version_downloads_again(
    puller: Puller, s3_server: S3Server, bucket: str
) -> None:
    put(s3_server, bucket, "m/model.joblib", b"version one")
    uri = f"s3://{bucket}/m/model.joblib"
    first = await puller.fetch(uri)
    again = await puller.fetch(uri)
    assert first == again and s3_server.gets[f"{bucket}/m/model.joblib"] == 1
    assert puller.metric("mesh_artifact_cache_hits_total") == 1
    put(s3_server, bucket, "m/model.joblib", b"version two")
    newer = await puller.fetch(uri)
    assert newer.read_bytes() == b"version two" and s3_server.gets[f"{bucket}/m/model.joblib"] == 2


async def test_concurrent_fetches_share_one_download(
    puller: Puller, s3_server: S3Server, bucket: str
) -> None:
    put(s3_server, bucket, "c/model.bin", os.urandom(3 << 20))
    paths = await asyncio.gather(*(puller.fetch(f"s3://{bucket}/c/model.bin") for _ in range(20)))
    assert len(set(paths)) == 1
    assert s3_server.gets[f"{bucket}/c/model.bin"] == 1


async def test_a_restarted_cache_keeps_what_was_downloaded(
    tmp_path: Path, s3_server: S3Server, bucket: str
) -> None:
    put(s3_server, bucket, "r/model.bin", b"kept across restarts")
    first = await make_puller(tmp_path, {"default": s3_server.storage_entry()})
    await first.fetch(f"s3://{bucket}/r/model.bin")
    await first.cache.close()
    (tmp_path / "cache" / ".tmp" / "leftover-partial").mkdir(parents=True)
    second = await make_puller(tmp_path, {"default": s3_server.storage_entry()})
    try:
        path = await second.fetch(f"s3://{bucket}/r/model.bin")
        assert path.read_bytes() == b"kept across restarts"
        assert s3_server.gets[f"{bucket}/r/model.bin"] == 1
        assert not (tmp_path / "cache" / ".tmp" / "leftover-partial").exists()
    finally:
        await second.cache.close()


async def test_missing_object_is_not_found_with_the_uri_and_no_credentials(
    puller: Puller, s3_server: S3Server, bucket: str
) -> None:
    for uri in (f"s3://{bucket}/absent/model.joblib", f"s3://no-such-bucket-{bucket}/m.joblib"):
        with pytest.raises(ArtifactNotFound, match="not found") as caught:
            await puller.fetch(uri)
        assert uri in str(caught.value) and SECRET_KEY not in str(caught.value)


async def test_wrong_credentials_are_permission_denied(
    tmp_path: Path, s3_server: S3Server, bucket: str
) -> None:
    put(s3_server, bucket, "d/model.joblib", b"x")
    entry = {
        **s3_server.storage_entry(),
        "access_key_id": "wrong-key-id",
        "secret_access_key": "wrong-secret-value",
    }
    made = await make_puller(tmp_path, {"default": entry})
    try:
        with pytest.raises(ArtifactAccessDenied, match="permission denied") as caught:
            await made.fetch(f"s3://{bucket}/d/model.joblib")
        text = str(caught.value)
        assert f"s3://{bucket}/d/model.joblib" in text and "wrong-secret-value" not in text
        assert "wrong-key-id" not in text
    finally:
        await made.cache.close()


@pytest.mark.parametrize("size", [1 << 20, 20 << 20], ids=["whole", "ranged"])
async def test_a_download_cut_halfway_is_retried_and_never_used_partially(
    puller: Puller, s3_server: S3Server, bucket: str, size: int
) -> None:
    data = os.urandom(size)
    put(s3_server, bucket, "cut/model.bin", data)
    s3_server.faults.cut[f"{bucket}/cut/model.bin"] = 1
    path = await puller.fetch(f"s3://{bucket}/cut/model.bin")
    assert path.read_bytes() == data
    assert s3_server.faults.cut[f"{bucket}/cut/model.bin"] == 0  # the cut happened


@pytest.mark.parametrize("size", [1 << 20, 20 << 20], ids=["whole", "ranged"])
async def test_a_corrupt_object_is_refused_and_leaves_nothing(
    puller: Puller, s3_server: S3Server, bucket: str, size: int
) -> None:
    put(s3_server, bucket, "bad/model.bin", os.urandom(size))
    s3_server.faults.corrupt[f"{bucket}/bad/model.bin"] = 1
    with pytest.raises(ArtifactCorrupt, match="does not match its"):
        await puller.fetch(f"s3://{bucket}/bad/model.bin")
    assert not puller.cache.cached(f"s3://{bucket}/bad/model.bin")
    assert [p.name for p in (puller.cache.root / ".tmp").iterdir() if not p.name.startswith("evicted")] == []
    path = await puller.fetch(f"s3://{bucket}/bad/model.bin")  # the next fetch gets good bytes
    assert path.stat().st_size == size


async def test_a_full_cache_drops_the_least_recently_used_unused_artifacts_first(
    tmp_path: Path, s3_server: S3Server, bucket: str
) -> None:
    made = await make_puller(tmp_path, {"default": s3_server.storage_entry()}, cache_bytes=3 << 20)
    try:
        for name in ("a", "b", "c"):
            put(s3_server, bucket, f"lru/{name}", os.urandom(1 << 20))
        used = await made.table.fetch(f"s3://{bucket}/lru/a", storage={})
        used.loaded()  # a loaded model came from "a": it goes last
        for name in ("b", "c"):
            artifact = await made.table.fetch(f"s3://{bucket}/lru/{name}", storage={})
            artifact.release()  # unloaded: nothing uses it
        put(s3_server, bucket, "lru/d", os.urandom(1 << 20))
        await made.fetch(f"s3://{bucket}/lru/d")
        assert not made.cache.cached(f"s3://{bucket}/lru/b")
        assert made.cache.cached(f"s3://{bucket}/lru/a") and made.cache.cached(f"s3://{bucket}/lru/c")
        assert made.cache.used_bytes <= 3 << 20
        assert made.metric("mesh_artifact_cache_evictions_total") == 1
    finally:
        await made.cache.close()


async def test_an_artifact_larger_than_the_whole_cache_is_a_clear_error(
    tmp_path: Path, s3_server: S3Server, bucket: str
) -> None:
    put(s3_server, bucket, "huge/model.bin", os.urandom(2 << 20))
    made = await make_puller(tmp_path, {"default": s3_server.storage_entry()}, cache_bytes=1 << 20)
    try:
        with pytest.raises(ArtifactTooLarge, match="larger than the whole artifact cache"):
            await made.fetch(f"s3://{bucket}/huge/model.bin")
        assert s3_server.gets[f"{bucket}/huge/model.bin"] == 0
    finally:
        await made.cache.close()


async def test_unreachable_storage_uses_the_cached_copy_else_is_unavailable(
    tmp_path: Path, s3_server: S3Server, bucket: str
) -> None:
    put(s3_server, bucket, "o/model.bin", b"cached before the outage")
    good = await make_puller(tmp_path, {"default": s3_server.storage_entry()})
    await good.fetch(f"s3://{bucket}/o/model.bin")
    await good.cache.close()
    dead = {"default": s3_server.storage_entry(endpoint_url=f"http://127.0.0.1:{_closed_port()}")}
    offline = await make_puller(tmp_path, dead, backoff_s=0.01)
    try:
        path = await offline.fetch(f"s3://{bucket}/o/model.bin")
        assert path.read_bytes() == b"cached before the outage"
        with pytest.raises(Unavailable, match="storage unreachable") as caught:
            await offline.fetch(f"s3://{bucket}/o/other.bin")
        assert f"s3://{bucket}/o/other.bin" in str(caught.value)
    finally:
        await offline.cache.close()


def _closed_port() -> int:
    from mesh_tools.etcd_process import free_port

    return free_port()
