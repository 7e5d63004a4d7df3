"""The pod's settings: one typed object, read from ``MESH_*`` variables or passed in."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

import psutil
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mesh.request_budget import charge
from mesh_common.units import parse_size


def default_capacity() -> int:
    """Half of the host's memory: the rest is the pod's own footprint and headroom."""
    return int(psutil.virtual_memory().total * 0.5)


class MeshSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MESH_")

    pod_id: str = Field(default_factory=lambda: f"pod-{psutil.Process().pid}")
    """This pod's id in the registry; unique in the fleet."""

    host: str = "127.0.0.1"
    """Address the gRPC server binds to."""

    port: int = 8033
    """gRPC port for the data plane, ModelMesh's API, health and reflection (0 picks one)."""

    metrics_port: int | None = 2112
    """Prometheus metrics port (0 picks one; None or a negative number, ``MESH_METRICS_PORT=-1``,
    turns the endpoint off)."""

    capacity_bytes: int = Field(default_factory=default_capacity)
    """Bytes of loaded models this pod may hold; loads evict idle models to stay within it. When
    not given: ``memory_limit`` x ``capacity_fraction`` if a memory limit is, else half the host's
    memory."""

    memory_limit: int | None = None
    """The container's memory limit in bytes (or units: ``2Gi``); on Kubernetes from the downward API
    (``resourceFieldRef: limits.memory``; a container without a limit gets the node's allocatable
    memory there). Sets the capacity when ``capacity_bytes`` is not given."""

    capacity_fraction: float = Field(default=0.5, gt=0, le=1)
    """Share of ``memory_limit`` that loaded models may take; the rest is the pod's own footprint
    (interpreter, gRPC buffers, requests in flight, loads in progress)."""

    pressure_window_s: float = Field(default=300.0, gt=0)
    """How far back ``mesh_cache_pressure`` counts the models this pod served or was asked to load."""

    eviction_policy: Literal["gdsf", "lru"] = "gdsf"
    """Which idle models make room for a load: ``gdsf`` weighs use, load time and size
    (GreedyDual-Size-Frequency; it beats LRU in ``python -m placement.simulate``), ``lru``
    the least recently used."""

    gpu_fraction: float = Field(default=0.9, gt=0, le=1)
    """Fraction of each GPU's memory (found through NVML) this pod may use; no GPU: host only."""

    etcd: str | None = None
    """``HOST:PORT`` of etcd (several comma-separated: calls fail over between them); absent, with
    no ``etcd_config`` either: an in-memory registry for a single pod."""

    etcd_config: Path | None = None
    """A file holding ModelMesh's ``etcd_connection`` JSON (the key of its ``model-serving-etcd``
    Secret): endpoints, user and password, root prefix, CA and client certificate. See
    ``mesh.registry.etcd_config`` for the fields. Not together with ``etcd``."""

    namespace: str = "default"
    """Registry prefix: every key lives under ``/mesh/<namespace>/``."""

    load_concurrency: int = 2
    """Model loads that may run at once on this pod."""

    load_timeout_s: float = 120.0
    """A load that takes longer fails with UNAVAILABLE."""

    failure_ttl_s: float = 60.0
    """How long a failed load is remembered before a request may retry it."""

    probe_loads: bool = True
    """Load artifacts whose loading runs code (pickle: sklearn) in a worker process before the pod
    loads them, so one that kills its loader (``os._exit``, a segfault, the OOM killer) fails its
    load instead of killing the pod. Costs about the load's own time again, once per artifact file."""

    max_load_crashes: int = Field(default=2, ge=1)
    """Deaths while loading a model (a pod that died with the load in flight, or a loader process
    that died trying it) within ``crash_window_s`` after which no pod loads or serves it, fleet-wide,
    until it is registered again or cleared (``mesh clear``): the block does not expire."""

    crash_window_s: float = Field(default=3600.0, gt=0)
    """How long a death while loading a model counts toward ``max_load_crashes``: deaths further
    apart (unrelated pod failures, weeks apart) do not add up to a block."""

    janitor_interval_s: float = 3.0
    """Seconds between janitor rounds (one pod, elected through the registry, runs them)."""

    preloads_per_round: int = 2
    """Registered models the janitor loads ahead of demand per round, into free room only (0: off)."""

    copy_up_rate: float = Field(default=50.0, gt=0)
    """Requests/s per copy above which the janitor adds a copy of a model (up to its maximum)."""

    copy_up_queue_ms: float = Field(default=20.0, gt=0)
    """Queueing delay per call (ms) above which the janitor adds a copy."""

    copy_down_rate: float = Field(default=10.0, ge=0)
    """The janitor drops an extra copy when the others would each serve less than this (requests/s)."""

    copy_cooldown_s: float = 30.0
    """A copy younger than this is never dropped for being cold."""

    max_copies: int = Field(default=4, ge=1)
    """Most copies of a model that sets no ``max_copies`` of its own."""

    copies_per_round: int = 4
    """Copies the janitor adds or drops per round (0: copies are never scaled)."""

    infer_threads: int = Field(default=4, ge=1)
    """Threads that run inference too heavy for the event loop, shared fairly between models: while
    others wait, a model holds at most its share of them (``mesh.inference_threads``)."""

    fast_infer_threads: int = Field(default=1, ge=0)
    """Inference threads that slow models (``slow_call_s``) never take all of, kept for fast ones:
    a model answering in milliseconds never waits behind calls that take seconds. Below
    ``infer_threads``."""

    slow_call_s: float = Field(default=0.05, gt=0)
    """Models whose average call takes at least this long (or that have not answered yet) are slow:
    they share ``infer_threads - fast_infer_threads`` threads, and their batch rounds may overlap."""

    inline_infer_s: float = 0.002
    """Models whose average inference takes less than this run on the event loop."""

    max_batch_rows: int = 64
    """Concurrent calls to a row-independent model (sklearn) run as one batch of up to this many
    rows; 0 turns batching off. No call waits for a batch to fill."""

    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    """The event loop ``mesh serve`` runs on. uvloop's loop turns and timers are compiled: apart from
    the model itself, a call to a small model costs about a third fewer instructions than on
    asyncio's own loop (counted with callgrind)."""

    gc_freeze: bool = True
    """Freeze the heap (``gc.freeze``) once started and after loads that import modules, so the
    garbage collector's full collections skip the long-lived objects (see ``mesh/heap.py``)."""

    max_message_bytes: int = 64 * 1024 * 1024
    """Largest gRPC message accepted or sent; larger ones get RESOURCE_EXHAUSTED."""

    max_request_bytes_in_flight: int = 512 * 1024 * 1024
    """Memory the inference calls being decoded, run or forwarded may hold at once, as charged by
    ``mesh.request_budget.charge`` (twice a request's bytes, plus 256 per BYTES element). A call
    that finds it spent waits up to ``request_wait_s``, then gets RESOURCE_EXHAUSTED; one whose
    charge alone exceeds it gets RESOURCE_EXHAUSTED at once."""

    request_wait_s: float = Field(default=1.0, ge=0)
    """How long a call waits for room in ``max_request_bytes_in_flight`` (never past its deadline)."""

    decode_inline_bytes: int = 1024 * 1024
    """Inference requests at least this large are parsed and decoded on a thread, and checked
    against the model's signature before their tensors are decoded; smaller ones on the event loop."""

    decode_threads: int = Field(default=2, ge=1)
    """Threads that parse and decode large inference requests."""

    stop_grace_s: float = 5.0
    """Time in-flight calls get to finish on shutdown (after the hand-over)."""

    handoff_timeout_s: float = Field(default=30.0, ge=0)
    """On graceful stop, the longest the pod spends loading its recently used models on other pods
    before it drains and leaves (0: no hand-over); a hard bound. A whole graceful stop takes at
    most about ``handoff_timeout_s + stop_grace_s + 25 s`` (registry writes, each bounded by the
    registry's 5 s timeout; see ``Pod.stop``): set Kubernetes' ``terminationGracePeriodSeconds``
    above that (60 with the defaults)."""

    advertise_host: str | None = None
    """Address other pods use to reach this one (default: ``host``)."""

    lease_ttl_s: float = 10.0
    """Lifetime of this pod's registry lease without keep-alives: a dead pod vanishes after it."""

    publish_interval_s: float = 0.5
    """Least time between two publications of this pod's instance record."""

    route_attempts: int = 4
    """Pods a call may try (forwarding or loading) before it fails with UNAVAILABLE."""

    request_timeout_s: float = 60.0
    """Deadline for calls whose caller set none."""

    handoff_models: int = 20
    """On graceful stop, how many of the most recently used models are loaded elsewhere first."""

    storage_config: Path | None = None
    """ModelMesh's storage-config: a directory with one JSON file per storage key (a mounted
    Secret) or one JSON file of keys. Re-read when it changes."""

    cache_dir: Path | None = None
    """Directory of the on-disk artifact cache (default: ``<tmp>/mesh-artifacts/<pod_id>``)."""

    cache_size: int | None = None
    """Bytes of artifacts the cache keeps on disk (default: half the free space of its disk)."""

    pvc_root: Path = Path("/pvc_mounts")
    """Where PersistentVolumeClaims are mounted: ``pvc://<claim>/<path>`` is ``<pvc_root>/<claim>/<path>``."""

    download_concurrency: int = 8
    """Parallel requests (objects and byte ranges) per artifact download."""

    @field_validator(
        "capacity_bytes",
        "max_message_bytes",
        "max_request_bytes_in_flight",
        "decode_inline_bytes",
        "cache_size",
        "memory_limit",
        mode="before",
    )
    @classmethod
    def _sizes(cls, value: str | int | None) -> int | None:
        return None if value is None else parse_size(value)

    @field_validator("metrics_port")
    @classmethod
    def _metrics_off(cls, value: int | None) -> int | None:
        return None if value is None or value < 0 else value

    @model_validator(mode="after")
    def _consistent(self) -> MeshSettings:
        if self.etcd and self.etcd_config is not None:
            raise ValueError(
                "give etcd (--etcd, MESH_ETCD) or etcd_config (--etcd-config, MESH_ETCD_CONFIG), not both"
            )
        if self.memory_limit is not None and "capacity_bytes" not in self.model_fields_set:
            self.capacity_bytes = int(self.memory_limit * self.capacity_fraction)
        if self.copy_down_rate >= self.copy_up_rate:
            raise ValueError(
                f"copy_down_rate ({self.copy_down_rate:g}) must be below copy_up_rate "
                f"({self.copy_up_rate:g}), or copies would be added and dropped in turn"
            )
        if self.fast_infer_threads >= self.infer_threads:
            raise ValueError(
                f"fast_infer_threads ({self.fast_infer_threads}) must be below infer_threads "
                f"({self.infer_threads}), or slow models would have no thread"
            )
        if self.publish_interval_s > self.lease_ttl_s / 3:
            raise ValueError(
                f"publish_interval_s ({self.publish_interval_s:g}) must be at most a third of "
                f"lease_ttl_s ({self.lease_ttl_s:g}): keep-alives wait behind the publish interval, "
                "and a lease that runs out removes the pod from the fleet"
            )
        if self.max_request_bytes_in_flight < charge(self.max_message_bytes, 0):
            raise ValueError(
                f"max_request_bytes_in_flight ({self.max_request_bytes_in_flight}) must be at least "
                f"{charge(self.max_message_bytes, 0)}, what a numeric request of max_message_bytes "
                f"({self.max_message_bytes}) is charged, or such requests could never run"
            )
        return self

    def artifact_dir(self) -> Path:
        return self.cache_dir or Path(tempfile.gettempdir()) / "mesh-artifacts" / self.pod_id

    def artifact_bytes(self) -> int:
        if self.cache_size is not None:
            return self.cache_size
        directory = self.artifact_dir()
        directory.mkdir(parents=True, exist_ok=True)
        return int(psutil.disk_usage(str(directory)).free * 0.5)


class ControllerSettings(BaseSettings):
    """``mesh controller``'s settings (``MESH_CONTROLLER_*`` variables, or its flags)."""

    model_config = SettingsConfigDict(env_prefix="MESH_CONTROLLER_")

    target: str = "127.0.0.1:8033"
    """``HOST:PORT`` of the mesh's gRPC APIs (the chart's client Service: any pod answers)."""

    namespaces: list[str] = Field(default_factory=list)
    """Namespaces whose resources are served; empty (and no selector): every namespace."""

    namespace_selector: str = ""
    """``KEY=VALUE``: serve the namespaces labelled so (ModelMesh's ``modelmesh-enabled=true``)."""

    resync_s: float = Field(default=300.0, gt=0)
    """Seconds between re-registrations of every resource (the resources are the source of truth:
    what the registry lost comes back within this)."""

    liveness_port: int = 8081
    """Port of the ``/healthz`` liveness endpoint."""

    http_endpoint: str = ""
    """What ``status.httpEndpoint`` says (empty: the mesh serves no REST endpoint to advertise)."""

    request_timeout_s: float = Field(default=10.0, gt=0)
    """Deadline of each call to the mesh (``setVModel``, ``deleteVModel``)."""

    backoff_s: float = Field(default=0.2, gt=0)
    """First wait before reopening the watch stream after it could not be opened; doubles."""

    max_backoff_s: float = Field(default=10.0, gt=0)
    """Longest wait between tries to reach the mesh."""

    @field_validator("namespace_selector")
    @classmethod
    def _selector(cls, value: str) -> str:
        if value and (value.count("=") != 1 or not value.split("=")[0]):
            raise ValueError(f"namespace_selector must be KEY=VALUE, not {value!r}")
        return value

    def selector(self) -> tuple[str, str] | None:
        if not self.namespace_selector:
            return None
        key, value = self.namespace_selector.split("=")
        return key, value
