"""The registry on etcd v3, spoken directly over gRPC with our own stubs of etcd's API.

Why our own stubs (``proto/mesh_proto/etcd.proto``) rather than a client library: the
maintained asyncio clients are young, one of them edits ``sys.path``, and each registers
etcd's protobuf types in the default pool, so two of them (or any other user of those
types) cannot share a process. The part of etcd's stable v3 API we need is small: range,
put and delete inside a compare-and-swap transaction, a prefix watch from a revision,
and leases. Resuming a watch and resyncing after compaction are the caller's job
(``ModelStore``), so they work the same on every registry.

Every call has a timeout; an unreachable etcd surfaces as ``Unavailable`` naming the
endpoint, never as a hang. An etcd that stops answering (stalled on its disk, or cut off
by a partition) costs one timeout, not one per call: once a call times out, calls fail at
once until etcd answers again (a lease keep-alive, a watch event, or the one call let
through every ``RETRY_SILENT_S`` to try), so work that records itself in the registry on
the way (a load, an eviction) is not queued behind a timeout per write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc

from mesh.errors import Unavailable
from mesh.registry.base import (
    MUST_NOT_EXIST,
    NO_LEASE,
    Entry,
    Registry,
    RegistryCompacted,
    RegistryConflict,
    WatchEvent,
)
from mesh_proto import etcd_pb2 as pb
from mesh_proto import etcd_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_SILENT_S = 5.0
"""While etcd does not answer, one call in this long is let through to try it; the rest fail at once."""
_MOD = pb.Compare.CompareTarget.MOD
_EQUAL = pb.Compare.CompareResult.EQUAL


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key after every key starting with ``prefix`` (etcd's range_end)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


class EtcdRegistry(Registry):
    def __init__(self, endpoint: str, *, timeout_s: float = 5.0) -> None:
        self.endpoint = endpoint
        self._timeout_s = timeout_s
        self._channel: grpc.aio.Channel | None = None
        self._silent_since: float | None = None
        """When a call first timed out with no answer from etcd since (None: etcd answers)."""
        self._silence = ""
        self._next_try = 0.0

    def _connect(self) -> grpc.aio.Channel:
        """The channel, made on first use so it belongs to the event loop that uses it."""
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(
                self.endpoint,
                options=[
                    ("grpc.keepalive_time_ms", 10_000),
                    ("grpc.keepalive_timeout_ms", 5_000),
                    ("grpc.initial_reconnect_backoff_ms", 200),
                    ("grpc.max_reconnect_backoff_ms", 2_000),
                ],
            )
        return self._channel

    @property
    def _kv(self) -> pb_grpc.KVStub:
        return pb_grpc.KVStub(self._connect())

    @property
    def _watch(self) -> pb_grpc.WatchStub:
        return pb_grpc.WatchStub(self._connect())

    @property
    def _lease(self) -> pb_grpc.LeaseStub:
        return pb_grpc.LeaseStub(self._connect())

    async def read(self, key: str) -> tuple[Entry | None, int]:
        request = pb.RangeRequest(key=key.encode())
        response = await self._call(lambda: self._kv.Range(request, timeout=self._timeout_s))
        return (_entry(response.kvs[0]) if response.kvs else None), response.header.revision

    async def range(self, prefix: str) -> tuple[list[Entry], int]:
        start = prefix.encode()
        request = pb.RangeRequest(key=start, range_end=prefix_end(start))
        response = await self._call(lambda: self._kv.Range(request, timeout=self._timeout_s))
        return [_entry(kv) for kv in response.kvs], response.header.revision

    async def put(
        self, key: str, value: bytes, *, expected_revision: int | None = None, lease: int = NO_LEASE
    ) -> int:
        op = pb.RequestOp(request_put=pb.PutRequest(key=key.encode(), value=value, lease=lease))
        return await self._write(key, op, expected_revision)

    async def delete(self, key: str, *, expected_revision: int | None = None) -> int:
        op = pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key.encode()))
        return await self._write(key, op, expected_revision)

    async def watch(self, prefix: str, *, after_revision: int) -> AsyncIterator[WatchEvent]:
        start = prefix.encode()
        create = pb.WatchCreateRequest(
            key=start, range_end=prefix_end(start), start_revision=after_revision + 1, progress_notify=True
        )
        requests: asyncio.Queue[pb.WatchRequest | None] = asyncio.Queue()
        requests.put_nowait(pb.WatchRequest(create_request=create))
        call = self._watch.Watch(_drain(requests))
        try:
            async for response in call:
                self._answered()
                if response.compact_revision:
                    raise RegistryCompacted(revision=response.compact_revision)
                if response.canceled:
                    reason = response.cancel_reason
                    raise Unavailable(f"etcd at {self.endpoint} cancelled the watch: {reason}")
                for event in response.events:
                    deleted = event.type == pb.Event.EventType.DELETE
                    yield WatchEvent(
                        event.kv.key.decode(), None if deleted else event.kv.value, event.kv.mod_revision
                    )
        except grpc.aio.AioRpcError as exc:
            raise self._unavailable(exc) from None
        finally:
            requests.put_nowait(None)  # ends the request stream's task
            call.cancel()
        raise Unavailable(f"etcd at {self.endpoint} ended the watch")

    async def grant_lease(self, ttl_s: float) -> int:
        request = pb.LeaseGrantRequest(TTL=max(1, round(ttl_s)))
        response = await self._call(lambda: self._lease.LeaseGrant(request, timeout=self._timeout_s))
        if response.error:
            raise Unavailable(f"etcd at {self.endpoint} refused a lease: {response.error}")
        return int(response.ID)

    async def keep_alive(self, lease: int) -> bool:
        call = self._lease.LeaseKeepAlive(iter([pb.LeaseKeepAliveRequest(ID=lease)]), timeout=self._timeout_s)
        try:
            async for response in call:
                self._answered()
                return bool(response.TTL > 0)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.NOT_FOUND:  # expired while etcd was silent: it answers
                self._answered()
                return False
            self._failed(exc)
            raise self._unavailable(exc) from None
        finally:
            call.cancel()
        raise Unavailable(f"etcd at {self.endpoint} did not answer a lease keep-alive")

    async def revoke_lease(self, lease: int) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError):  # an expired lease is already revoked
            await self._lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=lease), timeout=self._timeout_s)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def _write(self, key: str, op: pb.RequestOp, expected_revision: int | None) -> int:
        compare = []
        if expected_revision is not None:
            compare.append(
                pb.Compare(key=key.encode(), target=_MOD, result=_EQUAL, mod_revision=expected_revision)
            )
        txn = pb.TxnRequest(compare=compare, success=[op])
        response = await self._call(lambda: self._kv.Txn(txn, timeout=self._timeout_s))
        if not response.succeeded:
            expected = "absent" if expected_revision == MUST_NOT_EXIST else f"at revision {expected_revision}"
            raise RegistryConflict(f"registry key {key!r} is no longer {expected}", key=key)
        return int(response.header.revision)

    async def _call(self, start: Callable[[], Awaitable[T]]) -> T:
        """One unary call; while etcd is silent, only the call due to try again is made."""
        if self._silent_since is not None:
            now = time.monotonic()
            if now < self._next_try:
                raise Unavailable(
                    f"the registry (etcd at {self.endpoint}) has not answered for "
                    f"{now - self._silent_since:.1f}s ({self._silence}); retry",
                    endpoint=self.endpoint,
                )
            self._next_try = now + RETRY_SILENT_S  # this call tries; the others still fail at once
        try:
            result = await start()
        except grpc.aio.AioRpcError as exc:
            self._failed(exc)
            raise self._unavailable(exc) from None
        self._answered()
        return result

    def _failed(self, exc: grpc.aio.AioRpcError) -> None:
        if exc.code() is not grpc.StatusCode.DEADLINE_EXCEEDED:
            return  # refused or reset: such calls fail fast by themselves
        now = time.monotonic()
        self._silence = f"{exc.code().name}: {exc.details()}"
        self._next_try = max(self._next_try, now + RETRY_SILENT_S)
        if self._silent_since is None:
            self._silent_since = now
            log.warning(
                "etcd at %s did not answer within %gs: registry calls fail at once until it answers "
                "(one is let through every %gs to try)",
                self.endpoint,
                self._timeout_s,
                RETRY_SILENT_S,
            )

    def _answered(self) -> None:
        if self._silent_since is not None:
            silent_s = time.monotonic() - self._silent_since
            log.info("etcd at %s answers again after %.1fs", self.endpoint, silent_s)
            self._silent_since = None
            self._next_try = 0.0

    def _unavailable(self, exc: grpc.aio.AioRpcError) -> Unavailable:
        return Unavailable(
            f"the registry (etcd at {self.endpoint}) is unreachable: {exc.code().name}: {exc.details()}",
            endpoint=self.endpoint,
        )


async def _drain(requests: asyncio.Queue[pb.WatchRequest | None]) -> AsyncIterator[pb.WatchRequest]:
    while (request := await requests.get()) is not None:
        yield request


def _entry(kv: pb.KeyValue) -> Entry:
    return Entry(kv.key.decode(), kv.value, kv.mod_revision)
