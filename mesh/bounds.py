"""What the mesh accepts as ids, paths and model keys: the bounds every registration is held to.

A model's record lives in one etcd value (at most 1.5 MiB), its id travels in gRPC metadata on
every hop between pods, and every listing carries its id and path: so each is bounded, and what
is past a bound is refused with ``InvalidInput`` at registration, never stored.
"""

from __future__ import annotations

import json
import unicodedata
from typing import Any

from mesh_common.errors import InvalidInput, quoted, quoted_uri
from puller.base import split_uri

MAX_ID_BYTES = 512
"""Longest model id, vmodel id or vmodel owner, in bytes of UTF-8 (Kubernetes' 253-character
names with ModelMesh-serving's ``__isvc-<hash>`` suffix fit; so does every id the mesh took before
it counted bytes)."""
MAX_PATH_BYTES = 4096
"""Longest ``modelInfo.path``, in bytes of UTF-8 (Linux's PATH_MAX; URIs in practice are far shorter)."""
MAX_KEY_BYTES = 16 * 1024
"""Longest model key JSON, in bytes of UTF-8: keeps a model's record far below etcd's 1.5 MiB value limit."""
MAX_KEY_DEPTH = 32
"""Deepest nesting of the model key JSON (``{"storage_params": {...}}`` is 2)."""


def check_id(what: str, value: str) -> None:
    """Refuse an id (``what``: ``modelId``, ``vModelId``, ``targetModelId``, ``owner``) that the
    registry cannot hold or a call cannot name: empty, longer than ``MAX_ID_BYTES``, holding a
    ``/`` or a character that is not printable (control characters such as newline or NUL, format
    characters, line separators). Any other Unicode text is an id."""
    if not value:
        raise InvalidInput(f"{what} must not be empty")
    check_bounded(what, value, MAX_ID_BYTES)
    if "/" in value:
        raise InvalidInput(f"{what} {quoted(value)} must not contain '/'")
    if not value.isprintable():
        bad = next(c for c in value if not c.isprintable())
        raise InvalidInput(
            f"{what} {quoted(value)} holds {unicodedata.name(bad, f'U+{ord(bad):04X}')}, which is not "
            "printable; ids are printable text (no control, format or line-separator characters)"
        )


def registrable(value: str) -> bool:
    """Whether an id may be in the registry: some version of the mesh accepted it (at most 512
    characters, no '/'). Others are never looked up there."""
    return 0 < len(value) <= 512 and "/" not in value


def check_bounded(what: str, value: str, limit: int, *, quote: bool = True) -> None:
    """Refuse ``value`` when its UTF-8 is longer than ``limit`` bytes; the refusal quotes its
    start unless ``quote`` is False (a model key may hold what must not be echoed)."""
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > limit:
        start = f" ({quoted(value, 40)})" if quote else ""
        raise InvalidInput(f"{what} is {size} bytes of UTF-8; at most {limit} are allowed{start}")


def check_path(model_id: str, path: str) -> None:
    """Refuse a ``modelInfo.path`` that is empty, longer than ``MAX_PATH_BYTES`` or holds a
    control character (a newline, a NUL: no file or URI has one)."""
    what = f"model {quoted(model_id)}: modelInfo.path"
    if not path:
        raise InvalidInput(f"{what} must name the artifact")
    check_bounded(what, path, MAX_PATH_BYTES, quote=False)
    if any(unicodedata.category(c) == "Cc" for c in path):
        raise InvalidInput(f"{what} {quoted_uri(path)} holds a control character")
    if "://" in path and "@" in split_uri(path).netloc:
        raise InvalidInput(
            f"{what} {quoted_uri(path)} carries credentials (user:password@): they belong in the "
            "storage-config Secret, named by the model key's storage_key, never in the registry"
        )


def parse_model_key(model_id: str, text: str) -> dict[str, Any]:
    """The model key JSON (``modelInfo.key``) as a dict: empty when absent; ``InvalidInput`` when
    longer than ``MAX_KEY_BYTES``, nested deeper than ``MAX_KEY_DEPTH``, not JSON or not an object."""
    if not text:
        return {}
    what = f"model {quoted(model_id)}: modelInfo.key"
    check_bounded(what, text, MAX_KEY_BYTES, quote=False)
    deep = InvalidInput(f"{what} is nested deeper than {MAX_KEY_DEPTH} levels")
    try:
        key = json.loads(text)
    except ValueError as exc:  # not JSON, or an integer longer than Python converts (4,300 digits)
        raise InvalidInput(f"{what} is not JSON: {exc}") from None
    except RecursionError:  # deeper than the parser's own limit (about 1,000 levels)
        raise deep from None
    if not isinstance(key, dict):
        raise InvalidInput(f"{what} must be a JSON object")
    if _depth(key) > MAX_KEY_DEPTH:
        raise deep
    return key


def _depth(value: object) -> int:
    """Nesting depth of parsed JSON (a scalar is 0, ``{}`` is 1), without recursion."""
    deepest, level = 0, [(value, 1)]
    while level:
        item, depth = level.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            level.extend((child, depth + 1) for child in children)
    return deepest
