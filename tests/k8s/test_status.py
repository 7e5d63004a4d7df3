"""The mesh's state of a resource's models -> Predictor and InferenceService status (pure)."""

from __future__ import annotations

from mesh.k8s.status import (
    LoadFailureView,
    ModelView,
    Observation,
    VModelView,
    inference_service_status,
    predictor_status,
    rfc3339,
)
from mesh_common.errors import InvalidSpec, NoSupportingRuntime

NOW = 1_780_000_000_000
EP = "grpc://mesh.serving.svc:8033"


def obs(vmodel=None, *models, model_id="m__ksp-1", **kw) -> Observation:
    return Observation(
        vmodel_id="m",
        model_id=model_id,
        grpc_endpoint=EP,
        vmodel=vmodel,
        models={v.model_id: v for v in models},
        **kw,
    )


def status(o: Observation, previous=None) -> dict:
    return predictor_status(o, previous=previous, now_ms=NOW)


def test_not_registered_yet_is_pending() -> None:
    s = status(obs())
    assert s["activeModelState"] == "Pending" and s["targetModelState"] == ""
    assert s["transitionStatus"] == "UpToDate" and s["available"] is True  # ModelMesh: Pending is available
    assert s["lastFailureInfo"] is None and s["vModelId"] == "m" and s["grpcEndpoint"] == EP


def test_model_states_map_as_modelmesh() -> None:
    v = VModelView("m", "m__ksp-1", "m__ksp-1")
    for mesh, ours in [("NOT_LOADED", "Standby"), ("LOADING", "Loading"), ("LOADED", "Loaded")]:
        s = status(obs(v, ModelView("m__ksp-1", mesh, loaded_copies=2, loading_copies=1)))
        assert s["activeModelState"] == ours and s["transitionStatus"] == "UpToDate"
        assert s["totalCopies"] == 3 and s["failedCopies"] == 0


def test_failed_load_shows_failure_info() -> None:
    v = VModelView("m", "m__ksp-1", "m__ksp-1")
    failed = ModelView(
        "m__ksp-1",
        "LOADING_FAILED",
        failed_copies=1,
        failures=(LoadFailureView("pod-b", "bad artifact", NOW - 5000),),
    )
    s = status(obs(v, failed))
    assert s["activeModelState"] == "FailedToLoad" and s["available"] is False
    assert s["lastFailureInfo"] == {
        "location": "pod-b",
        "reason": "ModelLoadFailed",
        "message": "bad artifact",
        "modelId": "m__ksp-1",
        "time": rfc3339(NOW - 5000),
    }
    assert s["failedCopies"] == 1 and s["totalCopies"] == 1


def test_transition_in_progress_then_blocked() -> None:
    v = VModelView("m", "m__ksp-1", "m__ksp-2")
    active = ModelView("m__ksp-1", "LOADED", loaded_copies=1)
    s = status(obs(v, active, ModelView("m__ksp-2", "LOADING", loading_copies=1), model_id="m__ksp-2"))
    assert (s["activeModelState"], s["targetModelState"], s["transitionStatus"]) == (
        "Loaded",
        "Loading",
        "InProgress",
    )
    assert s["totalCopies"] == 2 and s["available"] is True
    bad = ModelView(
        "m__ksp-2", "LOADING_FAILED", failed_copies=1, failures=(LoadFailureView("p", "boom", NOW),)
    )
    s = status(obs(v, active, bad, model_id="m__ksp-2"))
    assert (s["targetModelState"], s["transitionStatus"]) == ("FailedToLoad", "BlockedByFailedLoad")
    assert s["lastFailureInfo"]["modelId"] == "m__ksp-2" and s["available"] is True


def test_blocked_model_is_failed() -> None:
    v = VModelView("m", "m__ksp-1", "m__ksp-1")
    s = status(obs(v, ModelView("m__ksp-1", "NOT_LOADED", blocked=True)))
    assert s["activeModelState"] == "FailedToLoad" and s["lastFailureInfo"]["reason"] == "ModelLoadFailed"


def test_invalid_spec_keeps_the_serving_model() -> None:
    v = VModelView("m", "m__ksp-1", "m__ksp-1")
    refusal = InvalidSpec("no storage", model_id="m__ksp-9")
    s = status(obs(v, ModelView("m__ksp-1", "LOADED", loaded_copies=1), refusal=refusal, model_id="m__ksp-9"))
    assert s["transitionStatus"] == "InvalidSpec" and s["activeModelState"] == "Loaded" and s["available"]
    info = s["lastFailureInfo"]
    assert (
        info["reason"] == "InvalidPredictorSpec"
        and info["modelId"] == "m__ksp-9"
        and info["time"] == rfc3339(NOW)
    )
    later = predictor_status(
        obs(v, ModelView("m__ksp-1", "LOADED"), refusal=refusal), previous=s, now_ms=NOW + 60_000
    )
    assert later["lastFailureInfo"]["time"] == info["time"]  # the same failure keeps its time


def test_no_supporting_runtime() -> None:
    s = status(obs(refusal=NoSupportingRuntime("no runtime for tensorflow", model_id="m__ksp-1")))
    assert (s["activeModelState"], s["transitionStatus"]) == ("FailedToLoad", "UpToDate")
    assert s["lastFailureInfo"]["reason"] == "NoSupportingRuntime" and s["available"] is False
    v = VModelView("m", "m__ksp-1", "m__ksp-1")
    s = status(obs(v, ModelView("m__ksp-1", "LOADED"), refusal=NoSupportingRuntime("x", model_id="m__ksp-2")))
    assert (s["activeModelState"], s["targetModelState"], s["transitionStatus"]) == (
        "Loaded",
        "FailedToLoad",
        "BlockedByFailedLoad",
    )


def test_unreachable_mesh_is_runtime_unhealthy_and_keeps_states() -> None:
    v = VModelView("m", "m__ksp-1", "m__ksp-1")
    s = status(obs(v, ModelView("m__ksp-1", "LOADED"), unreachable="Waiting for the mesh"))
    assert s["activeModelState"] == "Loaded" and s["available"] is False
    assert s["lastFailureInfo"]["reason"] == "RuntimeUnhealthy"


def test_inference_service_shape() -> None:
    v = VModelView("m", "m__isvc-1", "m__isvc-1")
    p = status(obs(v, ModelView("m__isvc-1", "LOADED", loaded_copies=1), model_id="m__isvc-1"))
    s = inference_service_status(p, previous=None, now_ms=NOW)
    assert s["modelStatus"] == {
        "transitionStatus": "UpToDate",
        "states": {"activeModelState": "Loaded", "targetModelState": ""},
        "copies": {"failedCopies": 0, "totalCopies": 1},
        "lastFailureInfo": None,
    }
    assert s["url"] == EP and s["components"] == {"predictor": {"url": EP, "grpcUrl": EP}}
    assert [(c["type"], c["status"]) for c in s["conditions"]] == [
        ("PredictorReady", "True"),
        ("Ready", "True"),
    ]
    failed = status(
        obs(
            v,
            ModelView("m__isvc-1", "LOADING_FAILED", failures=(LoadFailureView("p", "x", NOW),)),
            model_id="m__isvc-1",
        )
    )
    s2 = inference_service_status(failed, previous=s, now_ms=NOW + 1000)
    assert s2["modelStatus"]["lastFailureInfo"]["modelRevisionName"] == "m__isvc-1"
    assert "url" not in s2 and s2["conditions"][0]["status"] == "False"
    assert s2["conditions"][0]["reason"] == "ModelLoadFailed"
    assert s2["conditions"][0]["lastTransitionTime"] == rfc3339(NOW + 1000)
    s3 = inference_service_status(failed, previous=s2, now_ms=NOW + 9000)
    assert s3["conditions"] == s2["conditions"]  # unchanged: nothing to write
