"""Artifact download throughput: the puller vs a plain single-stream boto3 ``download_file``.

    python bench/pull.py [--size-mib 200] [--rounds 3] [--concurrency 8]

Starts moto's S3 server in its own process on loopback, uploads one object of ``--size-mib``
(a multipart upload, as any large upload is), then alternates, ``--rounds`` times:

- baseline: ``download_file`` with ``TransferConfig(use_threads=False)`` (one stream);
- reference: ``download_file`` with boto3's default threaded transfer;
- the puller: a cold fetch through a fresh artifact cache (parallel by part, MD5-verified,
  renamed into place), then a second fetch of the same URI (a cache hit).

Prints each run's seconds and MiB/s, the medians, and the ratio puller / baseline.
Every figure comes from this run; the server shares the machine, so read ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from prometheus_client import CollectorRegistry

from mesh_tools.etcd_process import free_port
from puller import storage_fetchers

BUCKET = "bench"
KEY = "model/weights.bin"
CREDENTIALS = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench-secret"}


def start_moto(port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = s3_client(f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 30
    while True:
        try:
            client.list_buckets()
            return process
        except Exception:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("moto server did not start") from None
            time.sleep(0.1)


def s3_client(endpoint: str) -> object:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, max_pool_connections=16),
        **CREDENTIALS,
    )


def timed(call: object) -> float:
    started = time.perf_counter()
    call()  # type: ignore[operator]
    return time.perf_counter() - started


async def puller_round(endpoint: str, work: Path, concurrency: int) -> tuple[float, float]:
    config = work / "storage-config.json"
    entry = {"type": "s3", "endpoint_url": endpoint, "region": "us-east-1"}
    entry.update({"access_key_id": CREDENTIALS["aws_access_key_id"]})
    entry.update({"secret_access_key": CREDENTIALS["aws_secret_access_key"]})
    config.write_text(json.dumps({"default": entry}))
    table, cache = storage_fetchers(
        cache_dir=work / "cache",
        cache_bytes=4 << 30,
        storage_config=config,
        pvc_root=work,
        metrics=CollectorRegistry(),
        concurrency=concurrency,
    )
    await cache.start()
    try:
        started = time.perf_counter()
        artifact = await table.fetch(f"s3://{BUCKET}/{KEY}", storage={})
        cold = time.perf_counter() - started
        artifact.release()
        started = time.perf_counter()
        (await table.fetch(f"s3://{BUCKET}/{KEY}", storage={})).release()
        hit = time.perf_counter() - started
    finally:
        await cache.close()
        table.close()
    return cold, hit


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = start_moto(port)
    work = Path(tempfile.mkdtemp(prefix="mesh-bench-pull-"))
    try:
        client = s3_client(endpoint)
        client.create_bucket(Bucket=BUCKET)  # type: ignore[attr-defined]
        source = work / "source.bin"
        with source.open("wb") as out:
            for _ in range(args.size_mib):
                out.write(os.urandom(1 << 20))
        client.upload_file(str(source), BUCKET, KEY)  # type: ignore[attr-defined]
        source.unlink()
        print(f"object: s3://{BUCKET}/{KEY}, {args.size_mib} MiB, moto server in its own process")
        single, threaded, cold, hits = [], [], [], []
        target = str(work / "baseline.bin")
        one_stream = TransferConfig(use_threads=False)
        for round_ in range(1, args.rounds + 1):
            single.append(timed(lambda: client.download_file(BUCKET, KEY, target, Config=one_stream)))  # type: ignore[attr-defined]
            os.unlink(target)
            threaded.append(timed(lambda: client.download_file(BUCKET, KEY, target)))  # type: ignore[attr-defined]
            os.unlink(target)
            round_dir = work / f"round-{round_}"
            round_dir.mkdir()
            c, h = asyncio.run(puller_round(endpoint, round_dir, args.concurrency))
            cold.append(c)
            hits.append(h)
            shutil.rmtree(round_dir)
            print(
                f"round {round_}: boto3 single {single[-1]:.2f}s, boto3 threaded {threaded[-1]:.2f}s, "
                f"puller {c:.2f}s, cache hit {h * 1000:.1f} ms"
            )
        mib = args.size_mib

        def line(name: str, seconds: list[float]) -> float:
            median = statistics.median(seconds)
            print(f"  {name:28s} median {median:7.2f} s  {mib / median:8.1f} MiB/s")
            return median

        print("medians:")
        base = line("boto3 download_file, 1 stream", single)
        ref = line("boto3 download_file, threaded", threaded)
        ours = line("puller (cold, verified)", cold)
        print(f"  {'puller cache hit':28s} median {statistics.median(hits) * 1000:7.1f} ms")
        print(f"ratio puller / single-stream boto3: {base / ours:.2f}x throughput")
        print(f"ratio puller / threaded boto3:      {ref / ours:.2f}x throughput")
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
