"""The hop protocol's encoding and decoding, as pure functions (the wire itself: test_peers)."""

from __future__ import annotations

import pytest

from mesh.edge.hop import (
    ERROR,
    EXCLUDE,
    HOP,
    MODEL_ID,
    MODEL_ID_BIN,
    REASON,
    REASON_BYTES,
    ROUTE,
    WHY,
    Hop,
    Route,
    error_trailers,
    hop_metadata,
    metadata_text,
    read_error_trailers,
    read_hop,
)
from mesh_common.errors import InvalidInput, ModelLoadFailed, Unreachable
from mesh_common.routing import Routing


def _read(metadata: object) -> dict[str, str]:
    return {key: metadata_text(key, value) for key, value in metadata}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "hop",
    [
        Hop("m", Route.LOADED),
        Hop("模型 with spaces ", Route.LOAD, frozenset({"pod-b", "pod-c"}), "placed on pod-b: ü"),
        Hop("m", Route.COPY, why="added by the janitor: busy"),
        Hop("*", Route.LOCAL),
        Hop("m", Route.UNLOAD, why="copy dropped: idle"),
    ],
)
def test_a_hop_reads_back_as_it_was_sent(hop: Hop) -> None:
    metadata = hop_metadata("pod-a", hop)
    assert dict(metadata)[HOP] == "pod-a"
    assert read_hop(_read(metadata)) == hop


def test_only_what_a_hop_needs_is_sent() -> None:
    keys = [key for key, _ in hop_metadata("pod-a", Hop("m", Route.LOADED))]
    assert keys == [HOP, ROUTE, MODEL_ID]
    keys = [key for key, _ in hop_metadata("pod-a", Hop("é", Route.LOAD, frozenset({"pod-b"}), "why"))]
    assert keys == [HOP, ROUTE, MODEL_ID_BIN, EXCLUDE, WHY]


def test_a_call_without_the_hop_key_is_no_hop_and_a_broken_hop_is_refused() -> None:
    assert read_hop({MODEL_ID: "m"}) is None  # a caller's routing key alone
    with pytest.raises(InvalidInput, match="needs mm-model-id"):
        read_hop({HOP: "pod-a", ROUTE: "loaded"})
    with pytest.raises(InvalidInput, match="needs mm-model-id"):
        read_hop({HOP: "pod-a", MODEL_ID: "m"})
    with pytest.raises(InvalidInput, match="'teleport' is none of loaded, load, copy, local, unload"):
        read_hop({HOP: "pod-a", MODEL_ID: "m", ROUTE: "teleport"})
    with pytest.raises(InvalidInput, match="mesh-why-bin is not UTF-8 text"):
        metadata_text(WHY, b"\xff")


def test_error_trailers_carry_the_routing_and_the_whole_reason() -> None:
    reason = "RuntimeError: bad weights; model 'x' ü"
    trailers = error_trailers(ModelLoadFailed(model_id="m", reason=reason))
    assert read_error_trailers(trailers) == (Routing.LOAD_FAILED, reason)
    # a pod relaying that a peer of its own gave no answer has answered: it is unavailable
    assert read_error_trailers(error_trailers(Unreachable("pod-c did not answer")))[0] is Routing.UNAVAILABLE
    long = error_trailers(ModelLoadFailed(model_id="m", reason="x" * 10_000))
    assert len(dict(long)[REASON]) == REASON_BYTES  # bounded: trailers stay under gRPC's 8 KiB
    # what no pod of the fleet sends reads as no routing at all (a final answer)
    assert read_error_trailers([(ERROR, "teleport")]) == (None, None)
    assert read_error_trailers([("grpc-status", "9")]) == (None, None)
