"""Where resource statuses go: the API server's status subresource, or a recording for tests.

A ``StatusWriter`` receives a resource's whole status (``None`` values mean "remove this
field"), already in its kind's shape, and only when it differs from what was last written.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol

from mesh.k8s.resources import ResourceRef
from mesh_common.errors import ResourceGone

MERGE_PATCH = "application/merge-patch+json"


class StatusWriter(Protocol):
    async def write(self, ref: ResourceRef, status: dict[str, Any]) -> None:
        """Write ``status`` to the resource; ``ResourceGone`` if it no longer exists, another
        exception if the API server refused or could not be reached."""
        ...


class KubeStatusWriter:
    """Merge-patches ``{"status": ...}`` into the resource's ``/status`` subresource through the
    ``kubernetes`` client (``PATCH .../namespaces/<ns>/<plural>/<name>/status``,
    ``Content-Type: application/merge-patch+json``); a ``None`` field removes it.

    The client is blocking: each write runs on a worker thread, so the event loop stays free.
    """

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        self._api = client.CustomObjectsApi(api_client)

    async def write(self, ref: ResourceRef, status: dict[str, Any]) -> None:
        await asyncio.to_thread(self._patch, ref, status)

    def _patch(self, ref: ResourceRef, status: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self._api.patch_namespaced_custom_object_status(
                ref.kind.group,
                ref.kind.version,
                ref.namespace,
                ref.kind.plural,
                ref.name,
                {"status": status},
                _content_type=MERGE_PATCH,
            )
        except ApiException as exc:
            if exc.status == 404:
                raise ResourceGone(f"{ref} no longer exists") from None
            raise


class RecordingStatusWriter:
    """Keeps every status written, per resource, with the time it was written (``time.monotonic``);
    ``wait_for`` waits (on an event, not a poll) until a resource's latest status satisfies a test."""

    def __init__(self) -> None:
        self.history: dict[ResourceRef, list[tuple[float, dict[str, Any]]]] = {}
        self.gone: set[ResourceRef] = set()  # resources deleted behind the controller's back
        self._changed = asyncio.Condition()

    async def write(self, ref: ResourceRef, status: dict[str, Any]) -> None:
        if ref in self.gone:
            raise ResourceGone(f"{ref} no longer exists")
        async with self._changed:
            self.history.setdefault(ref, []).append((time.monotonic(), status))
            self._changed.notify_all()

    def latest(self, ref: ResourceRef) -> dict[str, Any] | None:
        written = self.history.get(ref)
        return written[-1][1] if written else None

    def writes(self) -> int:
        return sum(len(h) for h in self.history.values())

    async def wait_for(
        self, ref: ResourceRef, test: Callable[[dict[str, Any]], bool], *, within_s: float, what: str
    ) -> tuple[float, dict[str, Any]]:
        """The first write (time, status) at or after the call's current history that passes
        ``test`` -- including the latest one already written; fails after ``within_s``."""

        async def passed() -> tuple[float, dict[str, Any]]:
            async with self._changed:
                seen = max(len(self.history.get(ref, [])) - 1, 0)
                while True:
                    written = self.history.get(ref, [])
                    for at, status in written[seen:]:
                        if test(status):
                            return at, status
                    seen = len(written)
                    await self._changed.wait()

        try:
            return await asyncio.wait_for(passed(), within_s)
        except TimeoutError:
            raise AssertionError(
                f"{what} did not happen within {within_s:g}s; last status of {ref}: {self.latest(ref)}"
            ) from None
