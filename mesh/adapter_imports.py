"""Each model type's adapter, resolved once per pod on a load thread.

A format's first use imports its framework (torch: about 1.4 s): on the event loop that would
stop every call for as long. Here it runs on a load thread, once however many loads wait for it;
the cache asks before any load's clock starts, so the import counts in no model's load time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor

from adapters import ModelAdapter
from mesh_common.errors import UnsupportedModelType


class AdapterImports:
    """Resolves model types to adapters off the event loop; later uses cost no thread hop."""

    def __init__(self, resolve: Callable[[str], ModelAdapter], executor: Executor) -> None:
        self._resolve = resolve
        """Blocking: imports the adapter's module (and framework); ``KeyError`` for an unknown type."""
        self._executor = executor
        self._resolved: dict[str, asyncio.Future[ModelAdapter]] = {}

    async def adapter(self, model_type: str) -> ModelAdapter:
        """The adapter for ``model_type``.

        Raises:
            UnsupportedModelType: no adapter serves the type.
            Exception: the framework failed to import (a later call tries again).
        """
        resolving = self._resolved.get(model_type)
        if resolving is None:
            loop = asyncio.get_running_loop()
            resolving = loop.run_in_executor(self._executor, self._resolve, model_type)
            self._resolved[model_type] = resolving
        elif resolving.done() and not resolving.cancelled() and resolving.exception() is None:
            return resolving.result()
        try:
            return await asyncio.shield(resolving)
        except KeyError:
            raise UnsupportedModelType(model_type=model_type, supported=[]) from None
        except Exception:
            if self._resolved.get(model_type) is resolving:
                del self._resolved[model_type]
            raise
