"""Just enough of the protobuf wire format to wrap a forwarded answer and to take a large
request's tensors out of it without copying them.

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


def split_field(data: bytes, field_number: int) -> tuple[bytes, list[memoryview]]:
    """Take a length-delimited field out of a serialized message without copying its payloads.

    Returns the message's other fields (serialized, in order: they parse as the message without
    the field) and each occurrence's payload as a view into ``data``.

    Raises:
        ValueError: the bytes end inside a field, or hold a group (a form this does not read).
    """
    view = memoryview(data)
    size = len(data)
    kept: list[memoryview] = []
    values: list[memoryview] = []
    run = 0  # where the current stretch of kept fields began
    position = 0
    while position < size:
        start = position
        key, position = _decode_varint(data, position)
        wire_type = key & 7
        if wire_type == _LEN:
            length, position = _decode_varint(data, position)
            end = position + length
            if end > size:
                raise ValueError("a field runs past the end of the message")
            if key >> 3 == field_number:
                if start > run:
                    kept.append(view[run:start])
                values.append(view[position:end])
                run = end
            position = end
        elif wire_type == _VARINT:
            _, position = _decode_varint(data, position)
        elif wire_type in _FIXED:
            position += _FIXED[wire_type]
        else:
            raise ValueError(f"wire type {wire_type} is not read here")
    if position > size:
        raise ValueError("a field runs past the end of the message")
    if run < size:
        kept.append(view[run:size])
    return b"".join(kept), values


_VARINT = 0
_FIXED = {1: 8, 5: 4}  # wire type -> bytes (fixed64, fixed32)


def _decode_varint(data: bytes, position: int) -> tuple[int, int]:
    value = 0
    shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise ValueError("a varint runs past the end of the message")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
