"""Keeps the garbage collector's full collections short while a pod serves.

A pod's heap is mostly objects that live as long as the process: the modules of gRPC,
protobuf, numpy and each framework a model was loaded with (scikit-learn brings scipy;
torch is larger still). CPython's full (generation 2) collection walks all of them,
and it runs every few seconds under load because calls in flight during a young
collection get promoted: with scikit-learn imported, each one stopped the event loop,
and every call on it, for 50-95 ms (measured with ``gc.callbacks`` on a pod serving
32 concurrent callers).

``gc.freeze()`` moves every object alive now to a generation the collector never walks.
The pod freezes once it has started and again after a load that imported modules (a
framework's first model, or an estimator from a package not seen before), after a
full collection so no garbage is frozen. Objects frozen are still freed when their
last reference goes; only a reference cycle among them would stay, and freezes stop
once the frameworks in use are imported, so what can stay is bounded.
"""

from __future__ import annotations

import gc
import logging
import sys
import time

log = logging.getLogger(__name__)


class HeapFreezer:
    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self._modules_seen = -1

    def settle(self) -> bool:
        """Freeze the heap if modules were imported since the last freeze; True if it froze."""
        if not self.enabled or len(sys.modules) == self._modules_seen:
            return False
        started = time.perf_counter()
        gc.collect()
        gc.freeze()
        self._modules_seen = len(sys.modules)
        log.info(
            "heap frozen: %d objects the collector no longer walks (%.0f ms)",
            gc.get_freeze_count(),
            (time.perf_counter() - started) * 1000,
        )
        return True
