"""The mesh's one error tree. Every failure a caller can see is a ``MeshError``.

Each error carries a project-owned ``ErrorCode``; the gRPC edge maps codes to
statuses through one table (``mesh.edge.status``). Retryable conditions have
retryable codes; anything that is not a ``MeshError`` becomes an opaque
``INTERNAL`` logged with a trace id.

    MeshError
    ├── InvalidInput            INVALID_ARGUMENT   malformed request or tensor
    │   ├── UnsupportedModelType                   registration names no adapter
    │   └── ResourceRefused                        a Predictor/InferenceService the controller cannot register
    │       ├── InvalidSpec                            its spec is invalid (ModelMesh: InvalidPredictorSpec)
    │       └── NoSupportingRuntime                    no pod serves its model type (or its runtime)
    │           └── RuntimeNotRecognized               it names a runtime the mesh does not know
    ├── NotFound                NOT_FOUND
    │   ├── ModelNotFound                          no model or vmodel with that id
    │   └── ResourceGone                           a Kubernetes resource the controller held is deleted
    ├── AlreadyExists           ALREADY_EXISTS     re-registration with other info
    ├── FailedPrecondition      FAILED_PRECONDITION
    │   ├── ModelLoadFailed                        the model's last load failed
    │   │   └── LoaderCrashed                      the process loading it died
    │   ├── ArtifactNotFound                       nothing at the model's path
    │   ├── ArtifactAccessDenied                   storage refused our credentials
    │   ├── ArtifactCorrupt                        a download failed its checksum
    │   ├── ArtifactTooLarge                       larger than the whole artifact cache
    │   ├── StorageConfigError                     no or a bad storage-config entry
    │   ├── ModelInUse                             a vmodel still uses the model
    │   └── UnservableOutput                       the model answered a type v2 cannot carry
    ├── CapacityExceeded        RESOURCE_EXHAUSTED model larger than the whole cache
    ├── Busy                    RESOURCE_EXHAUSTED no room now; retry later
    ├── OutOfMemory             RESOURCE_EXHAUSTED the model ran out of memory on a call
    ├── RequestTooLarge         RESOURCE_EXHAUSTED a call would hold more than the pod's request budget
    ├── RequestBytesBusy        RESOURCE_EXHAUSTED the request budget stayed spent; retry later
    ├── Unavailable             UNAVAILABLE        retryable: registry down, load timed out
    │   ├── NotHere                                a peer does not hold the model (forwarding)
    │   ├── Unreachable                            a peer gave no answer at all (forwarding)
    │   └── RegistryAccessDenied                   etcd refused the pod's user, password or permissions
    ├── DeadlineExceeded        DEADLINE_EXCEEDED  the caller's deadline passed
    └── Unimplemented           UNIMPLEMENTED      an API the mesh does not offer
"""

from __future__ import annotations

import enum
import re
from typing import Any

QUOTE_CHARS = 200
"""How much of a caller's id, path or key a message quotes: enough for any id in ordinary use,
and a bounded message whatever the caller sent (a status message travels in a trailer, which
gRPC clients cap at 8-16 KiB)."""


def quoted(value: object, limit: int = QUOTE_CHARS) -> str:
    """``value`` as ``repr`` quotes it, cut after ``limit`` characters with its length named:
    how every message quotes what a caller sent (an id, a path, a model key, a type)."""
    if not isinstance(value, str):
        text = repr(value)
        return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


def quoted_uri(uri: str, limit: int = QUOTE_CHARS) -> str:
    """``quoted``, with a URI's user and password (``scheme://user:secret@host``) masked: how a
    message quotes a path a caller sent, which may carry credentials it should not have."""
    return quoted(_USERINFO.sub(r"\1***@", uri), limit)


_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#@]*@")


class ErrorCode(enum.Enum):
    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    ALREADY_EXISTS = "already_exists"
    FAILED_PRECONDITION = "failed_precondition"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    UNAVAILABLE = "unavailable"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    UNIMPLEMENTED = "unimplemented"


class MeshError(Exception):
    """Base of the tree. ``message`` is safe to show callers; ``fields`` are structured.

    ``signal``, when set, travels to a forwarding pod in the ``mesh-error`` trailer so it
    can tell "try another pod" from an answer to relay.
    """

    code: ErrorCode = ErrorCode.FAILED_PRECONDITION
    signal: str | None = None

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields

    def __str__(self) -> str:
        return self.message


class InvalidInput(MeshError):
    code = ErrorCode.INVALID_ARGUMENT


class UnsupportedModelType(InvalidInput):
    def __init__(self, *, model_type: str, supported: list[str]) -> None:
        super().__init__(
            f"unknown model type {quoted(model_type)}; supported types: {', '.join(sorted(supported))}",
            model_type=model_type,
        )


class ResourceRefused(InvalidInput):
    """A Kubernetes resource (Predictor, InferenceService) the controller cannot register.

    ``reason`` is ModelMesh's ``FailureReason`` written to the resource's ``lastFailureInfo``;
    ``transition`` the ``transitionStatus`` it shows while an earlier model keeps serving.
    ``model_id`` is the concrete model id the spec would have had.
    """

    reason: str = "InvalidPredictorSpec"
    transition: str = "InvalidSpec"

    def __init__(self, message: str, *, model_id: str = "") -> None:
        super().__init__(message, model_id=model_id)
        self.model_id = model_id


class InvalidSpec(ResourceRefused):
    """The spec cannot be registered as written (ModelMesh: ``InvalidSpec``/``InvalidPredictorSpec``)."""


class NoSupportingRuntime(ResourceRefused):
    """The spec is valid, but no pod of the mesh serves its model type: the model shows
    ``FailedToLoad`` with ``NoSupportingRuntime``, as in ModelMesh."""

    reason = "NoSupportingRuntime"
    transition = "BlockedByFailedLoad"


class RuntimeNotRecognized(NoSupportingRuntime):
    """The spec names a runtime (``runtime.name``) the mesh does not know."""

    reason = "RuntimeNotRecognized"


class NotFound(MeshError):
    code = ErrorCode.NOT_FOUND


class ResourceGone(NotFound):
    """The Kubernetes resource no longer exists (the API server answered 404 for it)."""


class ModelNotFound(NotFound):
    def __init__(self, *, model_id: str) -> None:
        super().__init__(f"model {quoted(model_id)} is not registered", model_id=model_id)
        self.model_id = model_id


class AlreadyExists(MeshError):
    code = ErrorCode.ALREADY_EXISTS


class FailedPrecondition(MeshError):
    code = ErrorCode.FAILED_PRECONDITION


class ModelLoadFailed(FailedPrecondition):
    signal = "load-failed"

    def __init__(self, *, model_id: str, reason: str) -> None:
        super().__init__(
            f"model {quoted(model_id)} failed to load: {reason}", model_id=model_id, reason=reason
        )
        self.model_id = model_id
        self.reason = reason


class LoaderCrashed(ModelLoadFailed):
    """The process loading the model died (an exit, a signal): the artifact kills whoever loads
    it. It counts against the model as a pod that died loading it does (``ModelRecord.crashes``)."""


class ArtifactNotFound(FailedPrecondition):
    """The artifact a registration points at is missing or unreadable."""

    signal = "load-failed"


class ArtifactAccessDenied(FailedPrecondition):
    """The store refused the request (wrong or missing credentials, no permission)."""

    signal = "load-failed"


class ArtifactCorrupt(FailedPrecondition):
    """A downloaded object did not match its size or the store's checksum."""

    signal = "load-failed"


class ArtifactTooLarge(FailedPrecondition):
    """The artifact is larger than this pod's whole artifact cache."""

    signal = "load-failed"


class StorageConfigError(FailedPrecondition):
    """The storage key a model names is missing from the storage config or is malformed."""

    signal = "load-failed"


class ModelInUse(FailedPrecondition):
    def __init__(self, *, model_id: str, vmodel_ids: list[str]) -> None:
        super().__init__(
            f"model {quoted(model_id)} is used by vmodel(s) "
            f"{', '.join(quoted(v) for v in sorted(vmodel_ids))}",
            model_id=model_id,
        )


class UnservableOutput(FailedPrecondition):
    """The model answered with an output no v2 datatype can carry: the model is at fault, not the
    request, and no retry helps until the model is replaced."""

    def __init__(self, *, output: str, dtype: str) -> None:
        super().__init__(
            f"the model's output {output!r} is numpy {dtype}, which no v2 datatype can carry; "
            "the model cannot be served as it is",
            output=output,
            dtype=dtype,
        )


class CapacityExceeded(MeshError):
    """The model can never fit: its size exceeds the pod's whole capacity."""

    code = ErrorCode.RESOURCE_EXHAUSTED
    signal = "no-room"

    def __init__(self, *, model_id: str, size_bytes: int, capacity_bytes: int) -> None:
        super().__init__(
            f"model {quoted(model_id)} needs {size_bytes} bytes but the pod's whole capacity is "
            f"{capacity_bytes} bytes",
            model_id=model_id,
            size_bytes=size_bytes,
            capacity_bytes=capacity_bytes,
        )


class QuotaExceeded(MeshError):
    """A tenant's cap (registered models or loaded bytes across the fleet) refuses the request.

    No signal: a forwarding pod relays it as is, since no other pod could do better.
    """

    code = ErrorCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, *, tenant: str, cap: str) -> None:
        super().__init__(message, tenant=tenant, cap=cap)


class OutOfMemory(MeshError):
    """The framework could not allocate memory while running the model on a call.

    No signal: the call's own size is the likely cause, so a forwarding pod relays it rather
    than trying the call elsewhere. The pod and the model serve on.
    """

    code = ErrorCode.RESOURCE_EXHAUSTED

    def __init__(self, detail: str) -> None:
        super().__init__(f"the model ran out of memory on this request: {detail}")


class RequestTooLarge(MeshError):
    """A call would hold more memory while it is decoded and run than the pod's whole budget of
    request bytes in flight (``MESH_MAX_REQUEST_BYTES_IN_FLIGHT``). No signal: every pod has the
    same budget, so a forwarding pod relays it."""

    code = ErrorCode.RESOURCE_EXHAUSTED

    def __init__(self, *, need_bytes: int, limit_bytes: int) -> None:
        super().__init__(
            f"the request needs {need_bytes} bytes while it is decoded and run, more than the pod's "
            f"{limit_bytes} bytes for requests in flight; send it in smaller requests",
            need_bytes=need_bytes,
            limit_bytes=limit_bytes,
        )


class RequestBytesBusy(MeshError):
    """The pod's budget of request bytes in flight stayed spent while the call waited: the caller
    should back off and retry."""

    code = ErrorCode.RESOURCE_EXHAUSTED

    def __init__(
        self, *, need_bytes: int, in_flight_bytes: int, waiting_bytes: int, limit_bytes: int, waited_s: float
    ) -> None:
        super().__init__(
            f"the pod is serving {in_flight_bytes} bytes of requests ({waiting_bytes} more waiting) of "
            f"its {limit_bytes}; this request needs {need_bytes} and found no room in {waited_s:.2f}s; "
            "retry later",
            need_bytes=need_bytes,
            in_flight_bytes=in_flight_bytes,
            limit_bytes=limit_bytes,
        )


class Busy(MeshError):
    """No room right now (every loaded model is serving); retrying later can succeed."""

    code = ErrorCode.RESOURCE_EXHAUSTED
    signal = "no-room"


class Unavailable(MeshError):
    code = ErrorCode.UNAVAILABLE
    signal = "unavailable"
    """Sent with the answer, so a forwarding pod tells a live pod's answer from no answer."""


class NotHere(Unavailable):
    """A forwarded call reached a pod that does not hold the model (or lost the race to load it)."""

    signal = "not-here"

    def __init__(self, message: str, *, pod_id: str, holder: str = "") -> None:
        super().__init__(message, pod_id=pod_id, holder=holder)
        self.holder = holder


class Unreachable(Unavailable):
    """A forwarded call got no answer from the peer's server: the connection could not be made or
    broke under the call. Unlike an ``Unavailable`` the peer answered, its process may be gone."""


class RegistryAccessDenied(Unavailable):
    """etcd refused the pod's credentials or permissions. At start the pod stops with this message;
    later (a password changed under a running pod) its registry calls fail with it, retryably, while
    the pod serves what it holds. The message never holds the password."""


class RemoteError(MeshError):
    """An error a peer answered, relayed to our caller with the peer's code and message."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class DeadlineExceeded(MeshError):
    code = ErrorCode.DEADLINE_EXCEEDED


class Unimplemented(MeshError):
    code = ErrorCode.UNIMPLEMENTED
