"""One call's tries through the fleet, and the pods this pod learned to skip for a while.

Every error a try meets is read by its ``routing`` (``mesh_common.errors.Routing``), the same
way for an error raised on this pod and one a peer answered: a failed load, no room, "not
here" or an unavailable pod exclude that pod and leave the next try to another; the deadline
ends the tries; a final error goes to the caller as it is.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from mesh_common.errors import (
    DeadlineExceeded,
    MeshError,
    ModelLoadFailed,
    Unavailable,
    quoted,
)
from mesh_common.routing import Routing

_NONE: frozenset[str] = frozenset()


class Tries:
    """What one call's tries met so far: the pods to skip, each refusal's reason, the failed loads
    by pod (the errors themselves, this pod's and peers' alike) and the last "no room"."""

    def __init__(self, model_id: str, excluded: frozenset[str] = _NONE) -> None:
        self.model_id = model_id
        self.excluded = set(excluded)
        self.reasons: list[str] = []
        self.load_failures: dict[str, MeshError] = {}
        self.no_room: MeshError | None = None
        self.timed_out = False

    def note(self, pod_id: str, error: MeshError) -> bool:
        """Record what a try on ``pod_id`` met (never a final error); whether another try may follow."""
        if error.routing is Routing.OUT_OF_TIME:  # not the pod's fault: it stays eligible
            self.reasons.append(f"{pod_id}: {error.message}")
            self.timed_out = True
            return False
        self.excluded.add(pod_id)
        if error.failed_load:
            self.load_failures[pod_id] = error
            return True
        self.reasons.append(f"{pod_id}: {error.message}")
        if error.no_room:
            self.no_room = error
        return True

    def refused(self, error: MeshError) -> MeshError:
        """What the caller gets when no pod is left to try (``error`` says why): "no room" met on the
        way wins over "no pod can load it" (room may come later), unless loads failed too."""
        if self.no_room is not None and not self.load_failures:
            return self.no_room
        return error

    def spent(self, deadline: float) -> MeshError:
        """What the caller gets once the tries are spent (or the deadline passed)."""
        if self.load_failures:
            return load_failed(self.model_id, self.load_failures)
        if self.no_room is not None and len(self.reasons) == 1:
            return self.no_room
        model = quoted(self.model_id)
        if self.timed_out or time.monotonic() >= deadline:
            tried = "; ".join(self.reasons) or "no pod answered in time"
            return DeadlineExceeded(f"model {model}: the deadline passed ({tried})", model_id=self.model_id)
        tried = "; ".join(self.reasons)
        return Unavailable(
            f"model {model} could not be served after {len(self.reasons)} attempt(s): {tried}",
            model_id=self.model_id,
        )


def load_failed(model_id: str, failures: Mapping[str, MeshError | str]) -> MeshError:
    """The error for a model whose loads failed, by pod (an error met on this call, or a reason the
    registry keeps): one failure is that error as it was raised (or ``ModelLoadFailed`` with the
    recorded reason); several are one ``ModelLoadFailed`` naming each pod's reason."""
    if len(failures) == 1:
        (failure,) = failures.values()
        return (
            failure if isinstance(failure, MeshError) else ModelLoadFailed(model_id=model_id, reason=failure)
        )
    reason = "; ".join(f"{pod}: {_detail(why)}" for pod, why in sorted(failures.items()))
    return ModelLoadFailed(model_id=model_id, reason=reason)


def _detail(failure: MeshError | str) -> str:
    return failure.detail if isinstance(failure, MeshError) else failure


class Suspects:
    """Pods that did not answer, skipped until their time is up (``suspect_s``, monotonic): their
    lease may not have expired yet. Of those, the ``silent`` ones gave no answer at all
    (``Unreachable``): their process may be gone though their instance record is not."""

    def __init__(self, suspect_s: float) -> None:
        self._suspect_s = suspect_s
        self._until: dict[str, float] = {}
        self._silent: dict[str, float] = {}

    def suspect(self, pod_id: str, error: MeshError) -> None:
        """``pod_id`` answered ``error`` (or nothing): skip it for a while if it is unavailable."""
        if error.routing not in (Routing.UNAVAILABLE, Routing.UNREACHABLE):
            return
        until = self._until[pod_id] = time.monotonic() + self._suspect_s
        if error.routing is Routing.UNREACHABLE:
            self._silent[pod_id] = until

    def suspected(self) -> frozenset[str]:
        """The pods to skip now (pruned of those whose time is up)."""
        if not self._until:  # on every call: nothing to prune
            return _NONE
        now = time.monotonic()
        self._until = {pod: until for pod, until in self._until.items() if until > now}
        return frozenset(self._until)

    def silent(self, suspected: frozenset[str]) -> frozenset[str]:
        """Of ``suspected`` (what ``suspected`` just returned), the pods that gave no answer at all."""
        if not self._silent:
            return _NONE
        self._silent = {pod: until for pod, until in self._silent.items() if pod in suspected}
        return frozenset(self._silent)
