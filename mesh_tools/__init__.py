"""The mesh's tools, apart from the serving core: the ``mesh`` command line (whose ``serve`` and
``controller`` commands start the core), a local fleet on loopback (``LocalFleet``, ``mesh up``),
a local etcd, ``mesh demo`` and the small sample models it, the tests and the benchmarks build.

The serving core (``mesh``) never imports this package; it imports the core.
"""
