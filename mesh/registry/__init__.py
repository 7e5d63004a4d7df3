"""The shared registry: a key-value store with compare-and-swap writes and a watch."""

from mesh.registry.base import Entry, Registry, RegistryConflict, WatchEvent
from mesh.registry.memory import MemoryRegistry
from mesh.registry.store import ModelStore, Unpublished

__all__ = [
    "Entry",
    "MemoryRegistry",
    "ModelStore",
    "Registry",
    "RegistryConflict",
    "Unpublished",
    "WatchEvent",
]
