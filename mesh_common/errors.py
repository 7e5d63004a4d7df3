"""The mesh's one error tree. Every failure a caller can see is a ``MeshError``.

Each error carries a project-owned ``ErrorCode``; the gRPC edge maps codes to
statuses through one table (``mesh.edge.status``). Retryable conditions have
retryable codes; anything that is not a ``MeshError`` becomes an opaque
``INTERNAL`` logged with a trace id.

Each class also says what it means for routing (``MeshError.routing``, a
``mesh_common.routing.Routing``, read the same way for an error raised here and one a peer
answered): ``ModelLoadFailed`` and the ``Artifact*`` and ``StorageConfigError`` errors are a
failed load, ``Busy`` and ``CapacityExceeded`` no room, ``NotHere``, ``Unavailable`` and
``Unreachable`` send the call to another pod, ``DeadlineExceeded`` ends the tries; every other
error is final (the caller gets it as it is).

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
    │   ├── LoadLost                               it was loading on a pod that stopped answering
    │   ├── NotHere                                a peer does not hold the model (forwarding)
    │   ├── Unreachable                            a peer gave no answer at all (forwarding)
    │   └── RegistryAccessDenied                   etcd refused the pod's user, password or permissions
    ├── DeadlineExceeded        DEADLINE_EXCEEDED  the caller's deadline passed
    └── Unimplemented           UNIMPLEMENTED      an API the mesh does not offer
"""

from __future__ import annotations

import enum
import re
from typing import Any, ClassVar

from mesh_common.routing import Routing

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

    ``routing`` (a class property) says what the error means for routing; ``detail`` is its
    reason alone, as a pod's failure record keeps it and the hop's reason trailer carries it.
    """

    code: ErrorCode = ErrorCode.FAILED_PRECONDITION
    routing: ClassVar[Routing] = Routing.FINAL

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields

    def __str__(self) -> str:
        return self.message

    @property
    def retry_elsewhere(self) -> bool:
        """Whether another pod may succeed where this error was raised."""
        return self.routing.retry_elsewhere

    @property
    def failed_load(self) -> bool:
        """Whether the model failed to load where this error was raised."""
        return self.routing is Routing.LOAD_FAILED

    @property
    def no_room(self) -> bool:
        """Whether the pod had no room for the model."""
        return self.routing is Routing.NO_ROOM

    @property
    def final(self) -> bool:
        """Whether the caller gets this error as it is (no other pod would do better)."""
        return self.routing is Routing.FINAL

    @property
    def detail(self) -> str:
        """The reason alone (a failed load's cause without "model X failed to load")."""
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
    routing = Routing.LOAD_FAILED

    def __init__(self, *, model_id: str, reason: str) -> None:
        super().__init__(
            f"model {quoted(model_id)} failed to load: {reason}", model_id=model_id, reason=reason
        )
        self.model_id = model_id
        self.reason = reason

    @property
    def detail(self) -> str:
        return self.reason


class LoaderCrashed(ModelLoadFailed):
    """The process loading the model died (an exit, a signal): the artifact kills whoever loads
    it. It counts against the model as a pod that died loading it does (``ModelRecord.crashes``)."""


class ArtifactNotFound(FailedPrecondition):
    """The artifact a registration points at is missing or unreadable."""

    routing = Routing.LOAD_FAILED


class ArtifactAccessDenied(FailedPrecondition):
    """The store refused the request (wrong or missing credentials, no permission)."""

    routing = Routing.LOAD_FAILED


class ArtifactCorrupt(FailedPrecondition):
    """A downloaded object did not match its size or the store's checksum."""

    routing = Routing.LOAD_FAILED


class ArtifactTooLarge(FailedPrecondition):
    """The artifact is larger than this pod's whole artifact cache."""

    routing = Routing.LOAD_FAILED


class StorageConfigError(FailedPrecondition):
    """The storage key a model names is missing from the storage config or is malformed."""

    routing = Routing.LOAD_FAILED


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
    routing = Routing.NO_ROOM

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

    Final: a forwarding pod relays it as is, since no other pod could do better.
    """

    code = ErrorCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, *, tenant: str, cap: str) -> None:
        super().__init__(message, tenant=tenant, cap=cap)


class OutOfMemory(MeshError):
    """The framework could not allocate memory while running the model on a call.

    Final: the call's own size is the likely cause, so a forwarding pod relays it rather
    than trying the call elsewhere. The pod and the model serve on.
    """

    code = ErrorCode.RESOURCE_EXHAUSTED

    def __init__(self, detail: str) -> None:
        super().__init__(f"the model ran out of memory on this request: {detail}")


class RequestTooLarge(MeshError):
    """A call would hold more memory while it is decoded and run than the pod's whole budget of
    request bytes in flight (``MESH_MAX_REQUEST_BYTES_IN_FLIGHT``). Final: every pod has the
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
    routing = Routing.NO_ROOM


class Unavailable(MeshError):
    code = ErrorCode.UNAVAILABLE
    routing = Routing.UNAVAILABLE


class LoadLost(Unavailable):
    """The model was loading on a pod that stopped answering: no pod loads it until the registry
    records that pod's fate (it may have died of the model). A call waits for that within its
    deadline; past it, UNAVAILABLE."""


class NotHere(Unavailable):
    """A forwarded call reached a pod that does not hold the model (or lost the race to load it)."""

    routing = Routing.NOT_HERE

    def __init__(self, message: str, *, pod_id: str, holder: str = "") -> None:
        super().__init__(message, pod_id=pod_id, holder=holder)
        self.holder = holder


class Unreachable(Unavailable):
    """A forwarded call got no answer from the peer's server: the connection could not be made or
    broke under the call. Unlike an ``Unavailable`` the peer answered, its process may be gone."""

    routing = Routing.UNREACHABLE


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
    routing = Routing.OUT_OF_TIME


class Unimplemented(MeshError):
    code = ErrorCode.UNIMPLEMENTED
