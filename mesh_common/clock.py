"""The mesh's wall clock: milliseconds since the Unix epoch, the unit every record's time uses."""

from __future__ import annotations

import time


def now_ms() -> int:
    """Milliseconds since the Unix epoch (wall clock, not monotonic: records compare across pods)."""
    return int(time.time() * 1000)
