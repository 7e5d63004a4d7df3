"""Whether this pod takes new calls: the one answer behind gRPC health, ``ServerReady`` and ``ModelReady``.

A pod is ready from the end of its start until its stop begins, and never again after that
(a stop is final). Readiness is what a load balancer reads to send calls here or elsewhere:

- ``grpc.health.v1.Health`` service ``""``: ``SERVING`` while ready, else ``NOT_SERVING``
  (the chart's probes read it).
- ``ServerReady``: the same flag, read from the same place.
- ``ModelReady``: false while the pod is not ready, whatever the model's state, as Triton answers
  "not ready" for every model once its server is exiting.
- ``ServerLive`` is not readiness: it stays true until the process exits, so nothing restarts a
  pod that is handing its models over on its way out.

The stop marks the pod not ready before it hands its models over, so new calls go to the pods
that stay while the ones already here (and any that still arrive) are served.
"""

from __future__ import annotations

from grpc_health.v1 import health, health_pb2


class PodReadiness:
    """Owns the pod's health servicer and the flag it publishes; ``ServerReady`` reads ``ready``."""

    def __init__(self) -> None:
        self.servicer = health.aio.HealthServicer()
        self._ready = False
        self._stopping = False

    @property
    def ready(self) -> bool:
        """True between ``serving()`` and ``stopping()``."""
        return self._ready

    async def not_yet(self) -> None:
        """Before the server starts: health answers ``NOT_SERVING`` until ``serving()``."""
        self._ready = False
        await self.servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)

    async def serving(self) -> None:
        """The pod has joined the fleet and serves. A no-op once the stop began."""
        if self._stopping:
            return
        self._ready = True
        await self.servicer.set("", health_pb2.HealthCheckResponse.SERVING)

    async def stopping(self) -> None:
        """The stop began: not ready from now on, for every service the servicer names."""
        self._stopping = True
        self._ready = False
        await self.servicer.enter_graceful_shutdown()
