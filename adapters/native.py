"""Opening a framework's large native libraries without holding the GIL, before it is imported.

A pod imports a format's framework (torch: about 1.4 s here) on a load thread, never on its event
loop. But CPython holds the GIL while it opens an extension module and runs the static
initializers of the libraries it needs (about 0.24 s for ``libtorch_cpu``), so even on a thread
that part of the import stops every other call. libc's ``dlopen`` called through ``ctypes.CDLL``
runs without the GIL: opened that way first, the libraries are already in the process when the
import's own ``dlopen`` asks for them, and the import holds the GIL only for Python work, which
it gives up every few milliseconds.

Only libraries that do not call into Python while they initialize belong here. A library that
cannot be opened this way is skipped: the import opens it (holding the GIL) and reports any
real error itself.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path

log = logging.getLogger(__name__)

NATIVE_LIBRARIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "pytorch": ("torch", ("lib/libc10.so", "lib/libtorch_cpu.so")),
}
"""Model type -> (the framework's package, its libraries relative to the package, in load order)."""


def preload(model_type: str) -> None:
    """Open the native libraries of ``model_type``'s framework without the GIL (Linux only; a no-op
    for other types, on other systems, and once the framework is imported). Blocking: call it on a
    thread, before importing the framework."""
    found = NATIVE_LIBRARIES.get(model_type)
    if found is None or not sys.platform.startswith("linux"):
        return
    package, libraries = found
    if package in sys.modules:
        return
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return
    root = Path(spec.origin).parent
    for library in libraries:
        path = root / library
        if not path.is_file() or not _dlopen(path):
            log.info("%s not opened ahead of importing %s: the import opens it", path.name, package)
            return


def _dlopen(path: Path) -> bool:
    # RTLD_LOCAL, as the import would open it; the handle stays open for the process's life.
    return bool(_libc_dlopen()(os.fsencode(path), os.RTLD_NOW | os.RTLD_LOCAL))


@cache
def _libc_dlopen() -> Callable[[bytes, int], int | None]:
    dlopen = ctypes.CDLL(None).dlopen  # a CDLL function: called with the GIL released
    dlopen.argtypes = [ctypes.c_char_p, ctypes.c_int]
    dlopen.restype = ctypes.c_void_p
    return dlopen
