"""Maps the core's error codes to gRPC statuses (one table) and counts every call.

``edge_method`` wraps a servicer method: a ``MeshError`` aborts with its mapped
status and message; anything else is logged with a trace id and answered with an
opaque ``INTERNAL`` that names the trace id. A cancellation that did not come from
gRPC (a future on the call's path cancelled under it) is answered ``UNAVAILABLE``:
gRPC sends no status for a handler that ends cancelled, so the caller would wait
until its deadline.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import grpc

from mesh.metrics import MeshMetrics
from mesh_common.errors import ErrorCode, InvalidInput, MeshError, Unavailable

log = logging.getLogger(__name__)

GRPC_STATUS: dict[ErrorCode, grpc.StatusCode] = {
    ErrorCode.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    ErrorCode.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorCode.UNIMPLEMENTED: grpc.StatusCode.UNIMPLEMENTED,
}


class MalformedRequest:
    """What a servicer receives instead of a message when the request bytes do not parse."""

    def __init__(self, type_name: str, error: str) -> None:
        self.type_name = type_name
        self.error = error

    def reject(self) -> InvalidInput:
        return InvalidInput(f"the request is not a valid {self.type_name}: {self.error}")


ERROR_TRAILER = "mesh-error"
"""Trailing metadata naming a ``MeshError.signal`` (how a forwarding pod reads our answer)."""


def internal_error(method: str) -> str:
    """Logs the exception being handled under a new trace id; returns what the caller is told.

    The caller learns the trace id, not the exception: its text can hold paths and values."""
    trace_id = uuid.uuid4().hex[:16]
    log.exception("internal error in %s (trace id %s)", method, trace_id)
    return f"internal error (trace id {trace_id})"


def interrupted(method: str) -> Unavailable | None:
    """For a ``CancelledError`` caught in a handler: None when gRPC cancelled the call (the caller
    left, its deadline passed, the server is stopping), so it ends cancelled; else the error to
    answer with (the cancellation came from inside the pod)."""
    task = asyncio.current_task()
    if task is None or task.cancelling():
        return None
    log.warning("%s was cancelled from inside the pod; the caller is told to retry", method, exc_info=True)
    return Unavailable(f"{method} was interrupted inside the pod before it could answer; retry")


MESSAGE_BYTES = 4096
"""Most bytes a status message takes in its trailer, percent-encoded as gRPC sends it. Clients
refuse trailers past 8 KiB (some of the time) or 16 KiB (always) and report "Stream removed"
instead of the status: a message that quotes what a caller sent is cut to fit."""


def bounded(message: str, limit: int = MESSAGE_BYTES) -> str:
    """``message``, cut so that its percent-encoded form (``grpc-message``) fits in ``limit`` bytes."""
    size = 0
    for index, char in enumerate(message):
        size += 1 if " " <= char <= "~" and char != "%" else 3 * len(char.encode("utf-8", "replace"))
        if size > limit - 64:
            return f"{message[:index]}... (message cut at {index} of {len(message)} characters)"
    return message


async def abort(context: grpc.aio.ServicerContext, exc: MeshError) -> None:
    if exc.signal is not None:
        context.set_trailing_metadata(((ERROR_TRAILER, exc.signal),))
    await context.abort(GRPC_STATUS[exc.code], bounded(exc.message))


class HasMetrics(Protocol):
    metrics: MeshMetrics


S = TypeVar("S", bound=HasMetrics)
Handler = Callable[[S, Any, grpc.aio.ServicerContext], Awaitable[Any]]


def edge_method(method: str) -> Callable[[Handler[S]], Handler[S]]:
    """Maps errors to statuses and counts the call. An error is counted before the abort sends
    its status, so a caller that reads the metrics right after its call sees it."""

    def decorate(handler: Handler[S]) -> Handler[S]:
        @functools.wraps(handler)
        async def wrapper(self: S, request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()

            def observe(code: grpc.StatusCode) -> None:
                self.metrics.observe_request(method, code.name, time.perf_counter() - started)

            try:
                if isinstance(request, MalformedRequest):
                    raise request.reject()
                response = await handler(self, request, context)
            except MeshError as exc:
                observe(GRPC_STATUS[exc.code])
                await abort(context, exc)
            except grpc.aio.AbortError:
                raise
            except Exception:
                observe(grpc.StatusCode.INTERNAL)
                await context.abort(grpc.StatusCode.INTERNAL, internal_error(method))
            except asyncio.CancelledError:
                error = interrupted(method)
                if error is None:
                    observe(grpc.StatusCode.CANCELLED)
                    raise
                observe(GRPC_STATUS[error.code])
                await abort(context, error)
            except BaseException:
                observe(grpc.StatusCode.CANCELLED)
                raise
            observe(grpc.StatusCode.OK)
            return response

        return wrapper

    return decorate
