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

Connection (``mesh.registry.etcd_config.EtcdConnection``): several endpoints, one used at a
time; a call that finds it refusing or silent moves the next calls to the next one (the failed
call itself fails ``Unavailable``: its caller retries). With a user, the pod authenticates
(``Auth.Authenticate``) on first use and sends the token as ``token`` metadata on every call; a
token etcd no longer accepts (expired, or the user's password changed) is replaced and the call
made once more. TLS with the configured CA and optional client certificate. A root prefix is
prepended to every key sent and stripped from every key received, so the rest of the mesh sees
``/mesh/<namespace>/...`` whatever the prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc

from mesh.registry.base import (
    MUST_NOT_EXIST,
    NO_LEASE,
    Entry,
    Registry,
    RegistryCompacted,
    RegistryConflict,
    WatchEvent,
)
from mesh.registry.etcd_config import EtcdConnection
from mesh_common.errors import RegistryAccessDenied, Unavailable
from mesh_proto import etcd_pb2 as pb
from mesh_proto import etcd_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

T = TypeVar("T")
Metadata = tuple[tuple[str, str], ...] | None

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
    def __init__(self, connection: EtcdConnection | str, *, timeout_s: float = 5.0) -> None:
        if isinstance(connection, str):
            connection = EtcdConnection.from_endpoints(connection)
        self.connection = connection
        self._root = connection.root_prefix.encode()
        self._timeout_s = timeout_s
        self._current = 0
        """Index of the endpoint calls go to now."""
        self._channels: dict[int, grpc.aio.Channel] = {}
        self._token: str | None = None
        self._authenticating: asyncio.Lock | None = None
        self._silent_since: float | None = None
        """When a call first timed out with no answer from etcd since (None: etcd answers)."""
        self._silence = ""
        self._next_try = 0.0
        self._timeouts = 0
        """Calls timed out since etcd last answered: etcd counts as silent once every endpoint had one."""
        self._answered_at = time.monotonic()
        self._failed_at: float | None = None
        self.authentications = 0
        """Tokens obtained so far: one at first use, one more each time etcd stopped accepting one."""

    @property
    def endpoint(self) -> str:
        """The endpoint calls go to now, as ``scheme://host:port``."""
        return str(self.connection.endpoints[self._current])

    @property
    def reachable(self) -> bool:
        """Whether etcd answered since the last call that found it refusing or silent."""
        return self._failed_at is None or self._answered_at >= self._failed_at

    def _connect(self) -> grpc.aio.Channel:
        """The current endpoint's channel, made on first use so it belongs to the event loop that uses it."""
        channel = self._channels.get(self._current)
        if channel is None:
            channel = self._open(self.connection.endpoints[self._current].target)
            self._channels[self._current] = channel
        return channel

    def _open(self, target: str) -> grpc.aio.Channel:
        c = self.connection
        options: list[tuple[str, int | str]] = [
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2_000),
        ]
        if not c.tls:
            return grpc.aio.insecure_channel(target, options=options)
        if c.override_authority:
            options.append(("grpc.ssl_target_name_override", c.override_authority))
        credentials = grpc.ssl_channel_credentials(
            root_certificates=c.ca_pem,
            private_key=c.client_key_pem,
            certificate_chain=c.client_certificate_pem,
        )
        return grpc.aio.secure_channel(target, credentials, options=options)

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
        request = pb.RangeRequest(key=self._key(key))
        response = await self._call(lambda md: self._kv.Range(request, timeout=self._timeout_s, metadata=md))
        return (self._entry(response.kvs[0]) if response.kvs else None), response.header.revision

    async def range(self, prefix: str) -> tuple[list[Entry], int]:
        start = self._key(prefix)
        request = pb.RangeRequest(key=start, range_end=prefix_end(start))
        response = await self._call(lambda md: self._kv.Range(request, timeout=self._timeout_s, metadata=md))
        return [self._entry(kv) for kv in response.kvs], response.header.revision

    async def put(
        self, key: str, value: bytes, *, expected_revision: int | None = None, lease: int = NO_LEASE
    ) -> int:
        op = pb.RequestOp(request_put=pb.PutRequest(key=self._key(key), value=value, lease=lease))
        return await self._write(key, op, expected_revision)

    async def delete(self, key: str, *, expected_revision: int | None = None) -> int:
        op = pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=self._key(key)))
        return await self._write(key, op, expected_revision)

    async def watch(self, prefix: str, *, after_revision: int) -> AsyncIterator[WatchEvent]:
        start = self._key(prefix)
        create = pb.WatchCreateRequest(
            key=start, range_end=prefix_end(start), start_revision=after_revision + 1, progress_notify=True
        )
        requests: asyncio.Queue[pb.WatchRequest | None] = asyncio.Queue()
        requests.put_nowait(pb.WatchRequest(create_request=create))
        try:
            metadata = await self._credentials()
        except grpc.aio.AioRpcError as exc:
            self._failed(exc)
            raise self._error(exc) from None
        call = self._watch.Watch(_drain(requests), metadata=metadata)
        try:
            async for response in call:
                self._answered()
                if response.compact_revision:
                    raise RegistryCompacted(revision=response.compact_revision)
                if response.canceled:
                    reason = response.cancel_reason
                    if _token_rejected_text(reason):
                        self._token = None  # the next watch authenticates again
                    raise Unavailable(f"etcd at {self.endpoint} cancelled the watch: {reason}")
                for event in response.events:
                    deleted = event.type == pb.Event.EventType.DELETE
                    yield WatchEvent(
                        self._unroot(event.kv.key), None if deleted else event.kv.value, event.kv.mod_revision
                    )
        except grpc.aio.AioRpcError as exc:
            if _token_rejected(exc):
                self._token = None
            self._failed(exc)
            raise self._error(exc) from None
        finally:
            requests.put_nowait(None)  # ends the request stream's task
            call.cancel()
        raise Unavailable(f"etcd at {self.endpoint} ended the watch")

    async def grant_lease(self, ttl_s: float) -> int:
        request = pb.LeaseGrantRequest(TTL=max(1, round(ttl_s)))
        response = await self._call(
            lambda md: self._lease.LeaseGrant(request, timeout=self._timeout_s, metadata=md)
        )
        if response.error:
            raise Unavailable(f"etcd at {self.endpoint} refused a lease: {response.error}")
        return int(response.ID)

    async def keep_alive(self, lease: int) -> bool:
        try:
            metadata = await self._credentials()
        except grpc.aio.AioRpcError as exc:
            self._failed(exc)
            raise self._error(exc) from None
        request = iter([pb.LeaseKeepAliveRequest(ID=lease)])
        call = self._lease.LeaseKeepAlive(request, timeout=self._timeout_s, metadata=metadata)
        try:
            async for response in call:
                self._answered()
                return bool(response.TTL > 0)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.NOT_FOUND:  # expired while etcd was silent: it answers
                self._answered()
                return False
            if _token_rejected(exc):
                self._token = None  # the next keep-alive authenticates again
            self._failed(exc)
            raise self._error(exc) from None
        finally:
            call.cancel()
        raise Unavailable(f"etcd at {self.endpoint} did not answer a lease keep-alive")

    async def revoke_lease(self, lease: int) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError):  # an expired lease is already revoked
            metadata = await self._credentials()
            await self._lease.LeaseRevoke(
                pb.LeaseRevokeRequest(ID=lease), timeout=self._timeout_s, metadata=metadata
            )

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            await channel.close()

    def _key(self, key: str) -> bytes:
        return self._root + key.encode()

    def _unroot(self, key: bytes) -> str:
        return key[len(self._root) :].decode()

    def _entry(self, kv: pb.KeyValue) -> Entry:
        return Entry(self._unroot(kv.key), kv.value, kv.mod_revision)

    async def _write(self, key: str, op: pb.RequestOp, expected_revision: int | None) -> int:
        compare = []
        if expected_revision is not None:
            compare.append(
                pb.Compare(key=self._key(key), target=_MOD, result=_EQUAL, mod_revision=expected_revision)
            )
        txn = pb.TxnRequest(compare=compare, success=[op])
        response = await self._call(lambda md: self._kv.Txn(txn, timeout=self._timeout_s, metadata=md))
        if not response.succeeded:
            expected = "absent" if expected_revision == MUST_NOT_EXIST else f"at revision {expected_revision}"
            raise RegistryConflict(f"registry key {key!r} is no longer {expected}", key=key)
        return int(response.header.revision)

    async def _call(self, start: Callable[[Metadata], Awaitable[T]]) -> T:
        """One unary call; while etcd is silent, only the call due to try again is made. An endpoint
        that refuses the connection passes the call to the next one at once; a token etcd no longer
        accepts is replaced and the call made once more."""
        if self._silent_since is not None:
            now = time.monotonic()
            if now < self._next_try:
                raise Unavailable(
                    f"the registry (etcd at {self.endpoint}) has not answered for "
                    f"{now - self._silent_since:.1f}s ({self._silence}); retry",
                    endpoint=self.endpoint,
                )
            self._next_try = now + RETRY_SILENT_S  # this call tries; the others still fail at once
        endpoints_left = len(self.connection.endpoints)
        token_retried = False
        while True:
            try:
                result = await start(await self._credentials())
            except grpc.aio.AioRpcError as exc:
                if not token_retried and _token_rejected(exc):
                    token_retried, self._token = True, None
                    continue
                self._failed(exc)
                endpoints_left -= 1
                if exc.code() is grpc.StatusCode.UNAVAILABLE and endpoints_left > 0:
                    continue  # not sent: the next endpoint gets it
                raise self._error(exc) from None
            self._answered()
            return result

    async def _credentials(self) -> Metadata:
        """The ``token`` metadata for a call (authenticating first if no token is held), or None.
        Raises ``grpc.aio.AioRpcError`` when etcd does not answer or refuses the user."""
        c = self.connection
        if c.userid is None:
            return None
        if self._authenticating is None:
            self._authenticating = asyncio.Lock()
        async with self._authenticating:  # one Authenticate at a time: the others use its token
            if self._token is None:
                self._token = await self._authenticate(c.userid, c.password or "")
        return (("token", self._token),) if self._token else None

    async def _authenticate(self, userid: str, password: str) -> str:
        """A token for the user; "" when etcd has authentication off (it serves calls without one,
        as etcd's own client does then)."""
        auth = pb_grpc.AuthStub(self._connect())
        request = pb.AuthenticateRequest(name=userid, password=password)
        try:
            response = await auth.Authenticate(request, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as exc:
            if "authentication is not enabled" not in (exc.details() or ""):
                raise
            log.info("etcd at %s has authentication off: calls go without a token", self.endpoint)
            return ""
        self.authentications += 1
        log.info("authenticated to etcd at %s as %r", self.endpoint, userid)
        return str(response.token)

    def _failed(self, exc: grpc.aio.AioRpcError) -> None:
        code = exc.code()
        if code not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
            return  # etcd answered (a refusal is an answer)
        now = time.monotonic()
        self._failed_at = now
        failed = self.endpoint
        if len(self.connection.endpoints) > 1:
            self._current = (self._current + 1) % len(self.connection.endpoints)
            self._token = None  # tokens are per member with etcd's simple tokens
            log.warning("etcd at %s failed (%s): the next calls go to %s", failed, code.name, self.endpoint)
        if code is not grpc.StatusCode.DEADLINE_EXCEEDED:
            return  # refused or reset: such calls fail fast by themselves
        self._timeouts += 1
        if self._timeouts < len(self.connection.endpoints):
            return  # another endpoint is still to try
        self._silence = f"{code.name}: {exc.details()}"
        self._next_try = max(self._next_try, now + RETRY_SILENT_S)
        if self._silent_since is None:
            self._silent_since = now
            log.warning(
                "etcd at %s did not answer within %gs: registry calls fail at once until it answers "
                "(one is let through every %gs to try)",
                failed,
                self._timeout_s,
                RETRY_SILENT_S,
            )

    def _answered(self) -> None:
        self._answered_at = time.monotonic()
        self._timeouts = 0
        if self._silent_since is not None:
            silent_s = time.monotonic() - self._silent_since
            log.info("etcd at %s answers again after %.1fs", self.endpoint, silent_s)
            self._silent_since = None
            self._next_try = 0.0

    def _error(self, exc: grpc.aio.AioRpcError) -> Unavailable:
        """The mesh's error for a failed etcd call; a refusal of our credentials says which."""
        code, details = exc.code(), exc.details() or ""
        c = self.connection
        if code is grpc.StatusCode.INVALID_ARGUMENT and "authentication failed" in details:
            return RegistryAccessDenied(
                f"etcd at {self.endpoint} refused user {c.userid!r}: {details} "
                f"(check 'userid' and 'password' in {c.source})",
                endpoint=self.endpoint,
            )
        if "user name is empty" in details:
            return RegistryAccessDenied(
                f"etcd at {self.endpoint} requires authentication: give 'userid' and 'password' "
                f"(--etcd-config, ModelMesh's etcd_connection format)",
                endpoint=self.endpoint,
            )
        if code is grpc.StatusCode.PERMISSION_DENIED:
            return RegistryAccessDenied(
                f"etcd at {self.endpoint} denied user {c.userid!r} access to keys under "
                f"{c.root_prefix + '/mesh/'!r}: {details}",
                endpoint=self.endpoint,
            )
        return Unavailable(
            f"the registry (etcd at {self.endpoint}) is unreachable: {code.name}: {details}",
            endpoint=self.endpoint,
        )


def _token_rejected(exc: grpc.aio.AioRpcError) -> bool:
    """Whether etcd refused the token (expired, revoked, or older than its auth store), not the user."""
    return exc.code() is grpc.StatusCode.UNAUTHENTICATED or _token_rejected_text(exc.details() or "")


def _token_rejected_text(details: str) -> bool:
    return "invalid auth token" in details or "auth store is old" in details


async def _drain(requests: asyncio.Queue[pb.WatchRequest | None]) -> AsyncIterator[pb.WatchRequest]:
    while (request := await requests.get()) is not None:
        yield request
