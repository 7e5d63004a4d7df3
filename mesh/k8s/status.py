"""The mesh's state of a resource's models -> the resource's status (pure).

ModelMesh-serving's values and rules: ``NOT_LOADED`` is ``Standby``, ``LOADING`` ``Loading``,
``LOADED`` ``Loaded``, ``LOADING_FAILED`` ``FailedToLoad``, and a model not (yet) registered
``Pending``. While the vmodel's target differs from its active model the target's state shows as
``targetModelState`` and the transition is ``InProgress`` (``BlockedByFailedLoad`` once the target
failed); otherwise ``targetModelState`` is empty and the transition ``UpToDate``. A failed load
shows as ``lastFailureInfo`` (``ModelLoadFailed``, the pod, its message and time); a mesh that
cannot be reached as ``RuntimeUnhealthy`` with ``available`` false, the last known states kept.
``available``: the active model is neither missing nor failed and the mesh answers.

Copy counts cover the active and (when different) the target model: ``totalCopies`` loading,
loaded and failed copies, ``failedCopies`` the failed ones. Times are RFC 3339 UTC seconds.
"""

from __future__ import annotations

import time as _time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mesh_common.errors import ResourceRefused

MODEL_STATES = {
    "NOT_LOADED": "Standby",
    "LOADING": "Loading",
    "LOADED": "Loaded",
    "LOADING_FAILED": "FailedToLoad",
}
PREDICTOR_STATUS_FIELDS = (
    "available",
    "transitionStatus",
    "activeModelState",
    "targetModelState",
    "lastFailureInfo",
    "grpcEndpoint",
    "httpEndpoint",
    "totalCopies",
    "failedCopies",
    "vModelId",
)
"""Every field ``predictor_status`` writes (the CRD's schema must hold each)."""


@dataclass(frozen=True)
class LoadFailureView:
    pod_id: str
    reason: str
    time_ms: int


@dataclass(frozen=True)
class ModelView:
    """A concrete model as the mesh's watch reports it."""

    model_id: str
    status: str  # NOT_LOADED, LOADING, LOADED, LOADING_FAILED
    loaded_copies: int = 0
    loading_copies: int = 0
    failed_copies: int = 0
    failures: tuple[LoadFailureView, ...] = ()  # newest first
    blocked: bool = False


@dataclass(frozen=True)
class VModelView:
    vmodel_id: str
    active_model_id: str
    target_model_id: str
    owner: str = ""


@dataclass(frozen=True)
class Observation:
    """Everything a resource's status is computed from.

    ``model_id`` is the concrete id its current spec registers (empty when refused before an
    id could be made); ``models`` holds the views of the vmodel's active and target models
    that the mesh reported (absent: not registered); ``unreachable`` is the message to show
    while the mesh cannot be reached (None: it answers)."""

    vmodel_id: str
    model_id: str
    grpc_endpoint: str
    http_endpoint: str = ""
    refusal: ResourceRefused | None = None
    vmodel: VModelView | None = None
    models: Mapping[str, ModelView] = field(default_factory=dict)
    unreachable: str | None = None


def rfc3339(ms: int) -> str:
    return _time.strftime("%Y-%m-%dT%H:%M:%SZ", _time.gmtime(ms / 1000))


def model_state(view: ModelView | None) -> str:
    if view is None:
        return "Pending"
    if view.blocked:
        return "FailedToLoad"
    return MODEL_STATES.get(view.status, "Pending")


def predictor_status(obs: Observation, *, previous: Mapping[str, Any] | None, now_ms: int) -> dict[str, Any]:
    """The Predictor status for ``obs``; ``previous`` (the status last written) keeps the time of
    a failure that is still the same failure, so an unchanged state writes nothing."""
    active_state, target_state, transition = "Pending", "", "UpToDate"
    failure: dict[str, Any] | None = None
    total = failed = 0
    vmodel = obs.vmodel
    if vmodel is not None:
        active = obs.models.get(vmodel.active_model_id)
        active_state = model_state(active)
        watched = active
        if vmodel.active_model_id != vmodel.target_model_id:
            watched = obs.models.get(vmodel.target_model_id)
            target_state = model_state(watched)
            transition = "BlockedByFailedLoad" if target_state == "FailedToLoad" else "InProgress"
        for view in {id(v): v for v in (active, watched) if v is not None}.values():
            total += view.loaded_copies + view.loading_copies + view.failed_copies
            failed += view.failed_copies
        failure = _load_failure(watched)
        if obs.model_id and vmodel.target_model_id != obs.model_id and obs.refusal is None:
            transition = "InProgress"  # the current spec's model is being set
    refusal = obs.refusal
    if refusal is not None:
        failure = {"reason": refusal.reason, "message": refusal.message, "modelId": refusal.model_id}
        if refusal.transition == "InvalidSpec":
            transition = "InvalidSpec"
        elif vmodel is not None and vmodel.active_model_id != refusal.model_id:
            target_state, transition = "FailedToLoad", refusal.transition
        else:
            active_state, target_state, transition = "FailedToLoad", "", "UpToDate"
    elif obs.unreachable is not None:
        failure = {"reason": "RuntimeUnhealthy", "message": obs.unreachable, "modelId": obs.model_id}
    if failure is not None and "time" not in failure:
        failure["time"] = _kept_time(failure, previous, now_ms)
    return {
        "available": active_state not in ("", "FailedToLoad") and obs.unreachable is None,
        "transitionStatus": transition,
        "activeModelState": active_state,
        "targetModelState": target_state,
        "lastFailureInfo": failure,
        "grpcEndpoint": obs.grpc_endpoint,
        "httpEndpoint": obs.http_endpoint,
        "totalCopies": total,
        "failedCopies": failed,
        "vModelId": obs.vmodel_id,
    }


def _load_failure(view: ModelView | None) -> dict[str, Any] | None:
    if view is None or view.status == "LOADED" or not (view.failures or view.blocked):
        return None
    if not view.failures:
        return {
            "reason": "ModelLoadFailed",
            "message": "pods died loading this model; no pod loads it until its failures are cleared",
            "modelId": view.model_id,
        }
    newest = view.failures[0]
    info: dict[str, Any] = {
        "location": newest.pod_id,
        "reason": "ModelLoadFailed",
        "message": newest.reason,
        "modelId": view.model_id,
    }
    if newest.time_ms:
        info["time"] = rfc3339(newest.time_ms)
    return info


def _kept_time(failure: Mapping[str, Any], previous: Mapping[str, Any] | None, now_ms: int) -> str:
    """The previous failure's time when it is the same failure, else now."""
    before = (previous or {}).get("lastFailureInfo") or {}
    same = all(before.get(k) == failure.get(k) for k in ("reason", "modelId", "message"))
    return str(before["time"]) if same and before.get("time") else rfc3339(now_ms)


def inference_service_status(
    predictor: Mapping[str, Any], *, previous: Mapping[str, Any] | None, now_ms: int
) -> dict[str, Any]:
    """A Predictor status in an InferenceService's shape (as ModelMesh-serving wrote it):
    ``modelStatus``, ``url`` and ``components.predictor`` urls while available, and the
    ``PredictorReady`` and ``Ready`` conditions."""
    info = predictor.get("lastFailureInfo")
    failure = None
    if info is not None:
        failure = {k: v for k, v in info.items() if k != "modelId"}
        failure["modelRevisionName"] = info.get("modelId", "")
    status: dict[str, Any] = {
        "modelStatus": {
            "transitionStatus": predictor["transitionStatus"],
            "states": {
                "activeModelState": predictor["activeModelState"],
                "targetModelState": predictor["targetModelState"],
            },
            "copies": {"failedCopies": predictor["failedCopies"], "totalCopies": predictor["totalCopies"]},
            "lastFailureInfo": failure,
        },
    }
    ready = bool(predictor["available"])
    if ready:
        urls = {"url": predictor["grpcEndpoint"], "grpcUrl": predictor["grpcEndpoint"]}
        if predictor.get("httpEndpoint"):
            urls["restUrl"] = predictor["httpEndpoint"]
        status["url"] = predictor["grpcEndpoint"]
        status["components"] = {"predictor": urls}
    status["conditions"] = [
        _condition(kind, ready, info, previous, now_ms) for kind in ("PredictorReady", "Ready")
    ]
    return status


def _condition(
    kind: str, ready: bool, failure: Mapping[str, Any] | None, previous: Mapping[str, Any] | None, now_ms: int
) -> dict[str, Any]:
    value = "True" if ready else "False"
    before: Mapping[str, Any] = next(
        (c for c in (previous or {}).get("conditions") or [] if c.get("type") == kind), {}
    )
    since = before.get("lastTransitionTime") if before.get("status") == value else None
    condition = {"type": kind, "status": value, "lastTransitionTime": since or rfc3339(now_ms)}
    if not ready and failure is not None:
        condition["reason"] = str(failure.get("reason", ""))
        condition["message"] = str(failure.get("message", ""))
    return condition
