"""The pod-to-pod hop's protocol: every metadata key pods send each other, the routes a
forwarded call takes, how an error's meaning for routing crosses back, and ``Peers``, the
interface through which the router reaches other pods. Transport-free: no ``grpc`` here.

A forwarded call carries (request metadata):

- ``mesh-hop``: the sending pod's id. Its presence makes the call a hop: the receiver serves
  it or refuses it, never forwards it again.
- ``mesh-route``: a ``Route`` (serve only if loaded, load, add a copy, ...).
- ``mm-model-id``: the model the entry pod resolved (``mm-model-id-bin``, UTF-8, for an id
  that plain metadata cannot carry). The same keys, and ``mm-vmodel-id``, are the callers'
  routing keys (``ROUTING_KEYS``).
- ``mesh-exclude``: on a load, the pods the sender found unreachable, comma-separated: the
  receiver ignores their claims on the model.
- ``mesh-why-bin``: on a load, why placement chose the receiver (kept in its copy record);
  on a dropped copy, why (kept in the model's history). UTF-8: reasons may quote model ids.

An error answered to a hop carries (trailing metadata):

- ``mesh-error``: the error's ``Routing`` when another pod may succeed (not here, load
  failed, no room, unavailable); absent for a final error, which the sender relays.
- ``mesh-reason-bin``: the error's reason alone (``MeshError.detail``), UTF-8, so a failed
  load's reason reaches the sender without being cut out of the message.

Metadata starting ``mm-`` or ``mesh-`` is the mesh's own (``RESERVED_PREFIXES``): it is
never passed on to a runtime or carried by a forwarded call as the caller's.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from mesh_common.errors import InvalidInput, MeshError
from mesh_common.routing import Routing

HOP = "mesh-hop"
ROUTE = "mesh-route"
MODEL_ID = "mm-model-id"
MODEL_ID_BIN = "mm-model-id-bin"
VMODEL_ID = "mm-vmodel-id"
VMODEL_ID_BIN = "mm-vmodel-id-bin"
EXCLUDE = "mesh-exclude"
WHY = "mesh-why-bin"
ERROR = "mesh-error"
REASON = "mesh-reason-bin"

RESERVED_PREFIXES = ("mm-", "mesh-")
HOP_KEYS = frozenset({HOP, ROUTE, MODEL_ID, MODEL_ID_BIN, EXCLUDE, WHY})
"""The request keys a hop reads (``mm-model-id`` is both a hop key and a routing key)."""
ROUTING_KEYS: Mapping[str, bool] = {
    VMODEL_ID: True,
    VMODEL_ID_BIN: True,
    MODEL_ID: False,
    MODEL_ID_BIN: False,
}
"""A caller's routing keys -> whether the id names a vmodel."""

REASON_BYTES = 2048
"""Most UTF-8 bytes of a reason in its trailer: with a status message (at most 4 KiB) the
trailers stay under the 8 KiB that gRPC clients accept."""

Metadata = Sequence[tuple[str, str | bytes]]


class Route(enum.StrEnum):
    """How the receiving pod treats a forwarded call."""

    LOADED = "loaded"
    """Serve only if the model is loaded (or loading) there; else answer "not here"."""
    LOAD = "load"
    """Placement chose that pod (or it is loading the model): claim the load, load, serve."""
    COPY = "copy"
    """Load one more copy there even though other pods hold the model (the janitor scaling it)."""
    LOCAL = "local"
    """A fleet-wide read: answer from that pod alone."""
    UNLOAD = "unload"
    """Unload the copy there only."""


@dataclass(frozen=True, slots=True)
class Hop:
    """A forwarded call: the model, its route and, on a load or a dropped copy, what the
    sender adds."""

    model_id: str
    route: Route
    ignore: frozenset[str] = frozenset()
    """Pods the sender could not reach: their claims on the model do not count."""
    why: str = ""
    """Why the sender chose the receiver for a load, or drops the copy there."""


def hop_metadata(sender: str, hop: Hop) -> Metadata:
    """The request metadata that carries ``hop`` from pod ``sender``."""
    headers: list[tuple[str, str | bytes]] = [
        (HOP, sender),
        (ROUTE, hop.route.value),
        id_header(hop.model_id),
    ]
    if hop.ignore:
        headers.append((EXCLUDE, ",".join(sorted(hop.ignore))))
    if hop.why:
        headers.append((WHY, hop.why.encode()))
    return headers


def id_header(model_id: str) -> tuple[str, str | bytes]:
    """The metadata that carries a hop's model id: ``mm-model-id`` when the id is printable ASCII
    without surrounding spaces (what every pod of the fleet reads), else ``mm-model-id-bin``
    (any id: gRPC sends it base64-encoded)."""
    if model_id.isascii() and model_id.isprintable() and model_id == model_id.strip():
        return MODEL_ID, model_id
    return MODEL_ID_BIN, model_id.encode()


def read_hop(found: Mapping[str, str]) -> Hop | None:
    """The hop that ``found`` (``HOP_KEYS`` read from a call, as text) describes; None when the
    call is not a hop.

    Raises:
        InvalidInput: a hop without its model id or route, or with a route this pod does not know.
    """
    if HOP not in found:
        return None
    model_id = found.get(MODEL_ID) or found.get(MODEL_ID_BIN)
    route = found.get(ROUTE)
    if not model_id or not route:
        raise InvalidInput(f"a forwarded call needs {MODEL_ID} (or {MODEL_ID_BIN}) and {ROUTE} metadata")
    try:
        known = Route(route)
    except ValueError:
        raise InvalidInput(
            f"a forwarded call's {ROUTE} {route[:40]!r} is none of {', '.join(Route)}"
        ) from None
    ignore = frozenset(p for p in found.get(EXCLUDE, "").split(",") if p)
    return Hop(model_id, known, ignore, found.get(WHY, ""))


def metadata_text(key: str, value: str | bytes) -> str:
    """A metadata value as text: a ``-bin`` value must be UTF-8.

    Raises:
        InvalidInput: the bytes are not UTF-8.
    """
    if isinstance(value, str):
        return value
    try:
        return value.decode()
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"metadata {key} is not UTF-8 text ({exc.reason} at byte {exc.start} of {len(value)})"
        ) from None


def error_trailers(error: MeshError) -> Metadata:
    """The trailing metadata that tells a sending pod what ``error`` means for routing (none for a
    final error, or one that only the sender can observe)."""
    if not error.retry_elsewhere:
        return ()
    # A pod that answers with an ``Unreachable`` of its own has answered: it is unavailable.
    routing = Routing.UNAVAILABLE if error.routing is Routing.UNREACHABLE else error.routing
    reason = error.detail.encode("utf-8", "replace")[:REASON_BYTES]
    return ((ERROR, routing.value), (REASON, reason))


def read_error_trailers(trailers: Iterable[tuple[str, str | bytes]]) -> tuple[Routing | None, str | None]:
    """What a peer's trailers say: the error's routing (None: final, or not a pod of the fleet
    that answered) and its reason (None when not sent)."""
    routing: Routing | None = None
    reason: str | None = None
    for key, value in trailers:
        if key == ERROR:
            text = value.decode(errors="replace") if isinstance(value, bytes) else value
            routing = next((r for r in Routing if r.value == text), None)
        elif key == REASON:
            reason = value.decode(errors="replace") if isinstance(value, bytes) else value
    return routing, reason


class Peers(Protocol):
    """How the router reaches other pods. ``mesh.edge.peers.PeerClient`` is the gRPC one; unit
    tests use ``tests.mesh.fakes.FakePeers``.

    Every method raises the error tree: a peer's answer maps back to its ``MeshError`` (with the
    same ``routing``), no answer at all to ``Unreachable``.
    """

    async def forward(
        self,
        endpoint: str,
        method: str,
        payload: bytes,
        *,
        hop: Hop,
        timeout_s: float,
        metadata: Metadata = (),
    ) -> bytes:
        """Send ``payload`` (a request's raw bytes) to ``method`` on the pod at ``endpoint``;
        ``metadata`` is the caller's, carried on. Returns the answer's raw bytes."""
        ...

    async def load(self, endpoint: str, *, hop: Hop, timeout_s: float) -> None:
        """Ask the pod at ``endpoint`` to load ``hop.model_id`` (``hop.route``: load or copy)."""
        ...

    async def unload(self, endpoint: str, *, model_id: str, timeout_s: float, why: str = "") -> None:
        """Ask the pod at ``endpoint`` to unload its copy of ``model_id`` (``why`` goes in its history)."""
        ...
