"""The mesh: one pod of a multi-model serving fleet."""

__version__ = "0.1.0"
