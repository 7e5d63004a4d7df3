"""Reading and writing just enough of the protobuf wire format to route raw requests.

The router reads a request's model name (a top-level string field) without parsing
its tensors, and wraps a forwarded ``ModelInferResponse`` into a
``ModelStreamInferResponse`` without parsing it.
"""

from __future__ import annotations

from mesh.errors import InvalidInput

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


def peek_string(data: bytes, field_number: int, *, message: str) -> str:
    """The value of top-level string field ``field_number`` ("" if absent; last one wins)."""
    found = b""
    pos = 0
    try:
        while pos < len(data):
            tag, pos = _varint(data, pos)
            number, wire_type = tag >> 3, tag & 7
            if wire_type == _VARINT:
                _, pos = _varint(data, pos)
            elif wire_type == _I64:
                pos += 8
            elif wire_type == _I32:
                pos += 4
            elif wire_type == _LEN:
                length, pos = _varint(data, pos)
                if number == field_number:
                    found = data[pos : pos + length]
                pos += length
            else:
                raise ValueError(f"unsupported wire type {wire_type}")
            if pos > len(data):
                raise ValueError("truncated message")
        return found.decode()
    except (ValueError, IndexError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"the request is not a valid {message}: {exc}") from None


def embed(field_number: int, payload: bytes) -> bytes:
    """``payload`` (a serialized message) as length-delimited field ``field_number``."""
    return _encode_varint(field_number << 3 | _LEN) + _encode_varint(len(payload)) + payload


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


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
