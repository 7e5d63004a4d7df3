"""The pod's one readiness flag and the gRPC health status it publishes move together."""

from __future__ import annotations

from typing import Any

from grpc_health.v1 import health_pb2

from mesh.edge.health import PodReadiness

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Context:
    """What ``HealthServicer.Check`` reads of a call's context (nothing, for a known service)."""

    async def abort(self, code: Any, details: str) -> None:
        raise AssertionError(f"health aborted the check: {code} {details}")


async def published(readiness: PodReadiness) -> tuple[bool, int]:
    answer = await readiness.servicer.Check(health_pb2.HealthCheckRequest(service=""), Context())
    return readiness.ready, answer.status


async def test_not_ready_until_serving_and_never_again_once_stopping() -> None:
    readiness = PodReadiness()
    await readiness.not_yet()
    assert await published(readiness) == (False, NOT_SERVING)
    await readiness.serving()
    assert await published(readiness) == (True, SERVING)
    await readiness.stopping()
    assert await published(readiness) == (False, NOT_SERVING)
    await readiness.serving()  # a stop is final
    assert await published(readiness) == (False, NOT_SERVING)
