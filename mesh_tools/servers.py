"""The ``mesh`` commands that run until stopped: ``serve`` (one pod), ``controller`` (Kubernetes
resources -> the mesh's APIs), both production entrypoints of the image, and ``up`` (a local
fleet on loopback, for development). Flags override ``MESH_*`` variables, which override defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from pydantic import ValidationError

from mesh.settings import ControllerSettings, MeshSettings


def serve_settings(args: argparse.Namespace) -> MeshSettings:
    """The pod's settings from ``mesh serve``'s flags; what no flag gives comes from ``MESH_*``."""
    overrides: dict[str, object] = {}
    if args.metrics_port is not None:
        overrides["metrics_port"] = None if args.metrics_port < 0 else args.metrics_port
    if args.capacity is not None:
        overrides["capacity_bytes"] = args.capacity
    if args.handoff_timeout is not None:
        overrides["handoff_timeout_s"] = args.handoff_timeout
    for name in (
        "port",
        "host",
        "memory_limit",
        "capacity_fraction",
        "etcd_config",
        "storage_config",
        "cache_dir",
        "cache_size",
        "pvc_root",
    ):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.etcd:
        overrides["etcd"] = args.etcd
    if args.etcd or args.etcd_config is not None:  # one setting in two forms: the flag's form wins
        overrides.setdefault("etcd", None)
        overrides.setdefault("etcd_config", None)
    if args.pod_id:
        overrides["pod_id"] = args.pod_id
    return MeshSettings(**overrides)  # type: ignore[arg-type]


def run_serve(args: argparse.Namespace) -> int:
    from mesh.wiring import build_pod

    settings = serve_settings(args)

    async def run() -> None:
        pod = await build_pod(settings)
        await pod.start()
        if args.port_file:
            await asyncio.to_thread(Path(args.port_file).write_text, f"{pod.port}\n")
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        await stopping.wait()
        logging.getLogger("mesh").info("stopping")
        await pod.stop()

    if settings.event_loop == "uvloop":
        import uvloop

        uvloop.run(run())
    else:
        asyncio.run(run())
    return 0


def controller_settings(args: argparse.Namespace) -> ControllerSettings:
    """The controller's settings: ``MESH_CONTROLLER_*`` variables, overridden by the flags given.
    No namespace flag at all serves every namespace (as ``--all-namespaces``)."""
    overrides: dict[str, object] = {}
    for name in ("target", "namespace_selector", "resync_s", "liveness_port"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.namespace:
        overrides["namespaces"] = args.namespace
    if args.all_namespaces:
        overrides.update(namespaces=[], namespace_selector="")
    return ControllerSettings(**overrides)  # type: ignore[arg-type]


def run_controller(args: argparse.Namespace) -> int:
    from mesh.k8s.operator import run_controller

    try:
        settings = controller_settings(args)
    except ValidationError as exc:
        raise ValueError(str(exc)) from None
    asyncio.run(run_controller(settings))
    return 0


def run_up(args: argparse.Namespace) -> int:
    import tempfile
    import time

    from mesh_tools.fleet import LocalFleet

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # SIGTERM stops the fleet as Ctrl-C does. SIGINT is set too: Python leaves it ignored when it
    # starts so (a shell's background job without job control), and it stops a pod either way.
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, interrupt)
    with tempfile.TemporaryDirectory(prefix="mesh-up-") as workdir:
        storage = (
            ("--storage-config", str(Path(args.storage_config).resolve())) if args.storage_config else ()
        )
        fleet = LocalFleet(
            Path(workdir),
            pods=args.pods,
            capacity=args.capacity,
            etcd=args.etcd,
            base_port=args.port,
            extra_args=storage,
        )
        fleet.start()
        try:
            print(f"etcd at {fleet.etcd_endpoint}")
            for index, target in enumerate(fleet.targets):
                print(f"{fleet.pod_id(index)} serving on {target}")
            print("Ctrl-C stops the fleet", flush=True)
            while all(p is not None and p.poll() is None for p in fleet.processes):
                time.sleep(0.5)
            print("a pod exited; stopping the fleet", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 0
        finally:
            fleet.stop()
