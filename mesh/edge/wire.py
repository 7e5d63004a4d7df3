"""Writing just enough of the protobuf wire format to wrap a forwarded answer.

A forwarded ``ModelInferResponse`` becomes a ``ModelStreamInferResponse`` without
being parsed.
"""

from __future__ import annotations

_LEN = 2  # wire type of a length-delimited field


def embed(field_number: int, payload: bytes) -> bytes:
    """``payload`` (a serialized message) as length-delimited field ``field_number``."""
    return _encode_varint(field_number << 3 | _LEN) + _encode_varint(len(payload)) + payload


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
