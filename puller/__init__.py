"""Fetching model artifacts to local disk, one module per URI scheme, chosen by a table."""

from puller.base import ArtifactFetcher, FetcherTable, UnsupportedScheme
from puller.local import LocalFetcher

__all__ = ["ArtifactFetcher", "FetcherTable", "LocalFetcher", "UnsupportedScheme", "default_fetchers"]


def default_fetchers() -> FetcherTable:
    """The fetchers a pod has: local paths and ``file://`` URIs (a mounted volume)."""
    local = LocalFetcher()
    return FetcherTable({"": local, "file": local})
