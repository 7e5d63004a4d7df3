"""One call's tries: every error read by its routing, this pod's and a peer's alike."""

from __future__ import annotations

import time

import pytest

from mesh.route_tries import Suspects, Tries, load_failed
from mesh_common.errors import (
    ArtifactNotFound,
    Busy,
    CapacityExceeded,
    DeadlineExceeded,
    ErrorCode,
    InvalidInput,
    LoaderCrashed,
    MeshError,
    ModelLoadFailed,
    NotFound,
    NotHere,
    OutOfMemory,
    QuotaExceeded,
    RemoteError,
    StorageConfigError,
    Unavailable,
    Unreachable,
)
from mesh_common.routing import Routing

ROUTINGS: list[tuple[MeshError, Routing]] = [
    (ModelLoadFailed(model_id="m", reason="bad weights"), Routing.LOAD_FAILED),
    (LoaderCrashed(model_id="m", reason="the loader died"), Routing.LOAD_FAILED),
    (ArtifactNotFound("artifact not found: /m"), Routing.LOAD_FAILED),
    (StorageConfigError("no storage key 'k'"), Routing.LOAD_FAILED),
    (Busy("every loaded model is serving"), Routing.NO_ROOM),
    (CapacityExceeded(model_id="m", size_bytes=2, capacity_bytes=1), Routing.NO_ROOM),
    (NotHere("not loaded on pod-b", pod_id="pod-b"), Routing.NOT_HERE),
    (Unavailable("registry down"), Routing.UNAVAILABLE),
    (Unreachable("pod-b did not answer"), Routing.UNREACHABLE),
    (DeadlineExceeded("no answer in time"), Routing.OUT_OF_TIME),
    (QuotaExceeded("at its cap", tenant="t", cap="max_models"), Routing.FINAL),
    (OutOfMemory("10 GiB"), Routing.FINAL),
    (InvalidInput("bad tensor"), Routing.FINAL),
    (NotFound("no such model"), Routing.FINAL),
    (RemoteError(ErrorCode.FAILED_PRECONDITION, "a peer's answer"), Routing.FINAL),
]


@pytest.mark.parametrize(("error", "routing"), ROUTINGS, ids=lambda v: type(v).__name__)
def test_each_error_class_says_what_it_means_for_routing(error: MeshError, routing: Routing) -> None:
    assert error.routing is routing
    assert error.final == (routing is Routing.FINAL)
    assert error.failed_load == (routing is Routing.LOAD_FAILED)
    assert error.no_room == (routing is Routing.NO_ROOM)
    assert error.retry_elsewhere == (
        routing
        in (Routing.NOT_HERE, Routing.LOAD_FAILED, Routing.NO_ROOM, Routing.UNAVAILABLE, Routing.UNREACHABLE)
    )


def test_a_failed_load_here_and_on_a_peer_are_noted_alike_and_named_together() -> None:
    tries = Tries("m")
    assert tries.note("pod-a", ArtifactNotFound("artifact not found: /m (no /pvc-a/m)"))
    assert tries.note("pod-b", ModelLoadFailed(model_id="m", reason="artifact not found: /m (no /pvc-b/m)"))
    assert tries.excluded == {"pod-a", "pod-b"} and tries.reasons == []
    spent = tries.spent(time.monotonic() + 5)
    assert isinstance(spent, ModelLoadFailed)
    assert spent.message == (
        "model 'm' failed to load: pod-a: artifact not found: /m (no /pvc-a/m); "
        "pod-b: artifact not found: /m (no /pvc-b/m)"
    )


def test_one_failed_load_is_that_error_as_it_was_raised() -> None:
    here = ArtifactNotFound("artifact not found: /m")
    assert load_failed("m", {"pod-a": here}) is here
    recorded = load_failed("m", {"pod-a": "bad weights"})
    assert (
        isinstance(recorded, ModelLoadFailed) and recorded.message == "model 'm' failed to load: bad weights"
    )


def test_no_room_wins_over_no_pod_unless_loads_failed_and_the_deadline_ends_the_tries() -> None:
    tries = Tries("m")
    busy = Busy("pod-b: every loaded model is serving")
    assert tries.note("pod-b", busy)
    nobody = Unavailable("no pod can load model 'm'")
    assert tries.refused(nobody) is busy and tries.spent(time.monotonic() + 5) is busy
    assert not tries.note("pod-c", DeadlineExceeded("no answer in time"))
    assert "pod-c" not in tries.excluded  # out of time is not the pod's fault
    spent = tries.spent(time.monotonic() + 5)
    assert isinstance(spent, DeadlineExceeded) and "pod-c: no answer in time" in spent.message
    tries.note("pod-d", ModelLoadFailed(model_id="m", reason="bad"))
    assert tries.refused(nobody) is nobody


def test_only_unavailable_pods_are_suspected_and_silent_ones_apart() -> None:
    suspects = Suspects(30)
    suspects.suspect("pod-b", NotHere("evicted", pod_id="pod-b"))
    suspects.suspect("pod-c", ModelLoadFailed(model_id="m", reason="bad"))
    assert suspects.suspected() == frozenset()
    suspects.suspect("pod-b", Unavailable("registry down"))
    suspects.suspect("pod-c", Unreachable("no answer"))
    suspected = suspects.suspected()
    assert suspected == {"pod-b", "pod-c"} and suspects.silent(suspected) == {"pod-c"}
    brief = Suspects(0)
    brief.suspect("pod-b", Unreachable("no answer"))
    assert brief.suspected() == frozenset() and brief.silent(frozenset()) == frozenset()
