"""The ``mesh`` command: run a pod, manage models, call them, and run the demo."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
import numpy as np
from pydantic import ValidationError

from mesh.settings import ControllerSettings, MeshSettings
from mesh_common.errors import MeshError
from mesh_common.units import parse_size

DEFAULT_TARGET = "127.0.0.1:8033"


def _storage_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--storage-config",
        default=None,
        help="ModelMesh storage-config: a directory with one JSON file per storage key, or one JSON file",
    )
    p.add_argument(
        "--cache-dir", default=None, help="artifact cache directory (default: <tmp>/mesh-artifacts/<pod>)"
    )
    p.add_argument(
        "--cache-size", type=parse_size, default=None, help="artifact cache bytes on disk, e.g. 20GiB"
    )
    p.add_argument(
        "--pvc-root", default=None, help="where claims are mounted (pvc://claim/path; default /pvc_mounts)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mesh", description="Multi-model serving mesh")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run one pod")
    # Every default is None: what is not given comes from MESH_* variables, then MeshSettings.
    serve.add_argument("--port", type=int, default=None, help="gRPC port (0 picks a free one; default 8033)")
    serve.add_argument(
        "--metrics-port", type=int, default=None, help="Prometheus port (-1: off; default 2112)"
    )
    serve.add_argument("--capacity", type=parse_size, default=None, help="model bytes, e.g. 512MiB, 2GiB")
    serve.add_argument(
        "--memory-limit",
        type=parse_size,
        default=None,
        help="the container's memory limit (bytes or units); without --capacity, capacity = limit x fraction",
    )
    serve.add_argument(
        "--capacity-fraction",
        type=float,
        default=None,
        help="share of --memory-limit for models (default 0.5)",
    )
    serve.add_argument("--etcd", default=None, help="HOST:PORT of etcd (absent: in-memory registry)")
    serve.add_argument(
        "--etcd-config",
        default=None,
        help="file with ModelMesh's etcd_connection JSON (endpoints, userid, password, root_prefix, TLS)",
    )
    serve.add_argument(
        "--handoff-timeout",
        type=float,
        default=None,
        help="seconds a graceful stop may spend loading recent models elsewhere (default 30)",
    )
    serve.add_argument("--pod-id", default=None, help="this pod's id (default: pod-<pid>)")
    serve.add_argument("--host", default=None, help="address to bind (default 127.0.0.1; 0.0.0.0: all)")
    serve.add_argument("--port-file", default=None, help="write the bound gRPC port here once serving")
    _storage_arguments(serve)

    up = commands.add_parser("up", help="run a local fleet: an etcd and N pods on loopback")
    up.add_argument("--pods", type=int, default=3, help="number of pods")
    up.add_argument("--etcd", default=None, help="HOST:PORT of an etcd to use (default: start one)")
    up.add_argument("--port", type=int, default=8033, help="pod i listens on PORT+i (0: free ports)")
    up.add_argument("--capacity", default=None, help="model bytes per pod, e.g. 512MiB")
    up.add_argument(
        "--storage-config", default=None, help="storage-config directory or JSON file, shared by every pod"
    )

    def with_target(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--target",
            default=os.environ.get("MESH_TARGET", DEFAULT_TARGET),
            help=f"pod address (default $MESH_TARGET or {DEFAULT_TARGET})",
        )
        return p

    register = with_target(commands.add_parser("register", help="register a model"))
    register.add_argument("model_id")
    register.add_argument("--type", required=True, help="sklearn, onnx or pytorch")
    register.add_argument("--path", required=True, help="local path or URI of the artifact")
    register.add_argument("--key", default="", help='storage key JSON, e.g. {"storage_key": "s3"}')
    register.add_argument("--tenant", help="the tenant the model belongs to (default: default)")
    register.add_argument("--min-copies", type=int, help="copies kept loaded while the model is loaded")
    register.add_argument("--max-copies", type=int, help="most copies the janitor adds under load")
    register.add_argument("--load-now", action="store_true")
    register.add_argument("--sync", action="store_true", help="with --load-now: wait for the load")

    unregister = with_target(commands.add_parser("unregister", help="unregister a model"))
    unregister.add_argument("model_id")

    clear = with_target(
        commands.add_parser("clear", help="forget a model's load failures and crashes: it may load again")
    )
    clear.add_argument("model_id")

    status = with_target(
        commands.add_parser("status", help="a model's copies, placement and history; or the fleet's")
    )
    status.add_argument("model_id", nargs="?")

    tenant = commands.add_parser("tenant", help="tenant caps").add_subparsers(dest="action", required=True)
    tset = with_target(tenant.add_parser("set", help="set a tenant's caps (0: no cap)"))
    tset.add_argument("tenant")
    tset.add_argument("--max-models", type=int, default=0, help="registered models")
    tset.add_argument(
        "--max-loaded", type=parse_size, default=0, help="bytes loaded across the fleet, e.g. 2GiB"
    )
    with_target(tenant.add_parser("list", help="tenants with their caps and use"))

    listing = with_target(commands.add_parser("list", help="list registered models and vmodels"))
    listing.add_argument("--prefix", default="")

    watch = with_target(
        commands.add_parser("watch", help="models and vmodels, then each change as it happens (Ctrl-C ends)")
    )
    watch.add_argument("--prefix", default="", help="only ids that start with it")

    vmodel = commands.add_parser("vmodel", help="manage vmodels").add_subparsers(dest="action", required=True)
    vset = with_target(vmodel.add_parser("set", help="create a vmodel or point it at a new target"))
    vset.add_argument("vmodel_id")
    vset.add_argument("target_model_id")
    vset.add_argument("--type", help="register the target with this type")
    vset.add_argument("--path", help="register the target with this path")
    vset.add_argument("--owner", default="")
    vset.add_argument("--force", action="store_true", help="make the target active at once")
    vset.add_argument("--sync", action="store_true", help="wait for the transition")
    vset.add_argument("--auto-delete", action="store_true", help="delete the target when unused")
    vget = with_target(vmodel.add_parser("get", help="a vmodel's status"))
    vget.add_argument("vmodel_id")
    vdel = with_target(vmodel.add_parser("delete", help="delete a vmodel"))
    vdel.add_argument("vmodel_id")

    infer = with_target(commands.add_parser("infer", help="call a model"))
    infer.add_argument("model")
    infer.add_argument(
        "--input",
        action="append",
        required=True,
        metavar="NAME:DTYPE:SHAPE:JSON",
        help="e.g. input-0:FP32:1,4:[[5.1,3.5,1.4,0.2]] (repeat per input)",
    )
    infer.add_argument("--output", action="append", default=[], help="output name (repeat)")

    controller = commands.add_parser(
        "controller", help="register Predictors and InferenceServices (ModelMesh) of Kubernetes"
    )
    controller.add_argument("--target", default=None, help="HOST:PORT of the mesh's gRPC APIs")
    scope = controller.add_mutually_exclusive_group()
    scope.add_argument("--namespace", action="append", default=None, help="a namespace to serve (repeat)")
    scope.add_argument(
        "--namespace-selector", default=None, help="serve the namespaces with this label, KEY=VALUE"
    )
    scope.add_argument("--all-namespaces", action="store_true", help="serve every namespace")
    controller.add_argument("--resync-s", type=float, default=None, help="seconds between resyncs (300)")
    controller.add_argument("--liveness-port", type=int, default=None, help="/healthz port (8081)")

    demo = commands.add_parser("demo", help="serve hundreds of real models on a small local fleet")
    demo.add_argument("--models", type=int, default=300)
    demo.add_argument("--pods", type=int, default=3)
    demo.add_argument("--capacity", type=parse_size, default=parse_size("16MiB"), help="per pod")
    demo.add_argument("--requests", type=int, default=3000)
    demo.add_argument("--concurrency", type=int, default=16)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument(
        "--s3-endpoint",
        default=None,
        help="upload the models to this S3-compatible endpoint and serve them from there "
        "(credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)",
    )
    demo.add_argument("--s3-bucket", default="mesh-demo", help="bucket for --s3-endpoint (created if absent)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return _dispatch(args)
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except MeshError as exc:  # e.g. etcd refused the pod's credentials at start
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "serve":
        return _serve(args)
    if args.command == "up":
        return _up(args)
    if args.command == "controller":
        return _controller(args)
    if args.command == "demo":
        from mesh.demo import run_demo

        return run_demo(
            models=args.models,
            capacity=args.capacity,
            requests=args.requests,
            concurrency=args.concurrency,
            seed=args.seed,
            pods=args.pods,
            s3_endpoint=args.s3_endpoint,
            s3_bucket=args.s3_bucket,
        )
    from mesh.edge.client import MeshClient

    with MeshClient(args.target) as client:
        if args.command == "register":
            key = _model_key(
                args.key, tenant=args.tenant, min_copies=args.min_copies, max_copies=args.max_copies
            )
            status = client.register(
                args.model_id, args.type, args.path, key=key, load_now=args.load_now, sync=args.sync
            )
            _print_status(args.model_id, status)
        elif args.command == "unregister":
            client.unregister(args.model_id)
            print(f"unregistered {args.model_id}")
        elif args.command == "clear":
            cleared = client.clear_failures(args.model_id)
            was = "blocked, " if cleared.blocked else ""
            print(
                f"{args.model_id}: {was}{cleared.crashes} crash(es) and {cleared.failures} load failure(s) "
                "forgotten; it may load again"
            )
        elif args.command == "status":
            if args.model_id:
                _print_detail(client.describe(args.model_id))
            else:
                _print_fleet(client.fleet_status())
                _print_pod(client.pod_status())
        elif args.command == "list":
            _print_list(client.list_models(args.prefix))
        elif args.command == "watch":
            return _watch(client, args.prefix)
        elif args.command == "vmodel":
            return _vmodel(client, args)
        elif args.command == "tenant":
            if args.action == "set":
                _print_tenants(
                    [
                        client.set_tenant(
                            args.tenant, max_models=args.max_models, max_loaded_bytes=args.max_loaded
                        )
                    ]
                )
            else:
                _print_tenants(client.tenants().tenants)
        elif args.command == "infer":
            inputs = dict(parse_input(spec) for spec in args.input)
            for name, value in client.infer(args.model, inputs, args.output).items():
                print(f"{name}: {json.dumps(_jsonable(value))}")
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


def _controller(args: argparse.Namespace) -> int:
    from mesh.k8s.operator import run_controller

    try:
        settings = controller_settings(args)
    except ValidationError as exc:
        raise ValueError(str(exc)) from None
    asyncio.run(run_controller(settings))
    return 0


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
    if args.pod_id:
        overrides["pod_id"] = args.pod_id
    return MeshSettings(**overrides)  # type: ignore[arg-type]


def _serve(args: argparse.Namespace) -> int:
    from mesh.pod import Pod

    settings = serve_settings(args)

    async def run() -> None:
        pod = Pod(settings)
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


def _vmodel(client: object, args: argparse.Namespace) -> int:
    from mesh.edge.client import MeshClient
    from mesh_proto import model_mesh_pb2 as mm

    assert isinstance(client, MeshClient)
    if args.action == "set":
        fields: dict[str, object] = {
            "owner": args.owner,
            "force": args.force,
            "sync": args.sync,
            "autoDeleteTargetModel": args.auto_delete,
        }
        if args.type or args.path:
            fields["modelInfo"] = mm.ModelInfo(type=args.type or "", path=args.path or "")
        status = client.set_vmodel(args.vmodel_id, args.target_model_id, **fields)
    elif args.action == "get":
        status = client.vmodel_status(args.vmodel_id)
    else:
        client.delete_vmodel(args.vmodel_id)
        print(f"deleted vmodel {args.vmodel_id}")
        return 0
    print(
        f"{args.vmodel_id}: {mm.VModelStatusInfo.VModelStatus.Name(status.status)} "
        f"active={status.activeModelId or '-'} target={status.targetModelId or '-'}"
    )
    return 0


def parse_input(spec: str) -> tuple[str, np.ndarray]:
    """``NAME:DTYPE:SHAPE:JSON`` -> (name, array); SHAPE is comma-separated."""
    from adapters.datatypes import numpy_dtype

    try:
        name, datatype, shape_text, data = spec.split(":", 3)
        shape = tuple(int(d) for d in shape_text.split(",") if d)
        values = json.loads(data)
    except ValueError as exc:
        raise ValueError(f"--input {spec!r}: expected NAME:DTYPE:SHAPE:JSON_DATA ({exc})") from None
    dtype = numpy_dtype(datatype.upper())
    if datatype.upper() == "BYTES":
        array = np.array([str(v).encode() for v in np.ravel(values)], dtype=object).reshape(shape)
    else:
        array = np.array(values, dtype=dtype).reshape(shape)
    return name, array


def _jsonable(array: np.ndarray) -> object:
    if array.dtype == object:
        return [v.decode(errors="replace") if isinstance(v, bytes) else v for v in array.ravel()]
    return array.tolist()


def _print_status(model_id: str, status: object) -> None:
    from mesh_proto import model_mesh_pb2 as mm

    assert isinstance(status, mm.ModelStatusInfo)
    print(f"{model_id}: {mm.ModelStatusInfo.ModelStatus.Name(status.status)}")
    for copy in status.modelCopyInfos:
        print(f"  {copy.location}: {mm.ModelStatusInfo.ModelStatus.Name(copy.copyStatus)}")
    for error in status.errors:
        print(f"  error: {error}")


def _model_key(key: str, **options: object) -> str:
    """The model key JSON with the mesh's registration options added (those given)."""
    given = {name: value for name, value in options.items() if value is not None}
    if not given:
        return key
    try:
        parsed = json.loads(key) if key else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"--key is not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise ValueError("--key must be a JSON object")
    return json.dumps({**parsed, **given})


def _print_detail(detail: object) -> None:
    from mesh_proto import mesh_admin_pb2 as admin

    assert isinstance(detail, admin.ModelDetail)
    copies = f"copies {detail.min_copies}..{detail.max_copies or 'default'}"
    print(f"{detail.model_id}: {detail.status}  ({detail.type}, tenant {detail.tenant}, {copies})")
    print(f"  path {detail.path}")
    if detail.size_bytes:
        print(f"  size {_mib(detail.size_bytes)}, last load {detail.load_ms} ms")
    for copy in detail.copies:
        served = f"{copy.request_rate:.1f} req/s, queue {copy.queue_ms:.1f} ms"
        print(f"  copy on {copy.pod_id}: {copy.state} since {_when(copy.since_ms)}; {served}")
        if copy.why:
            print(f"    why: {copy.why}")
    for error in detail.errors:
        print(f"  error: {error}")
    if detail.history:
        print("  recent:")
    for event in detail.history:
        print(f"    {_when(event.time_ms)} {event.pod_id}: {event.what}")


def _when(time_ms: int) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(time_ms / 1000).strftime("%H:%M:%S")


def _print_tenants(tenants: Sequence[object]) -> None:
    from mesh_proto import mesh_admin_pb2 as admin

    print(f"{'TENANT':24s} {'MODELS':>7s} {'CAP':>7s} {'LOADED':>12s} {'CAP':>12s}")
    for t in tenants:
        assert isinstance(t, admin.TenantStatus)
        model_cap = str(t.max_models) if t.max_models else "-"
        bytes_cap = _mib(t.max_loaded_bytes) if t.max_loaded_bytes else "-"
        loaded = _mib(t.loaded_bytes)
        print(f"{t.tenant:24s} {t.models_registered:7d} {model_cap:>7s} {loaded:>12s} {bytes_cap:>12s}")


def _print_pod(status: object) -> None:
    from mesh_proto import mesh_admin_pb2 as admin

    assert isinstance(status, admin.PodStatusResponse)
    print(f"pod {status.pod_id} (mesh {status.version})")
    print(
        f"  capacity {_mib(status.capacity_bytes)}, used {_mib(status.used_bytes)}, "
        f"{len(status.loaded)} models loaded"
    )
    print(
        f"  loads {status.loads}, load failures {status.load_failures}, evictions {status.evictions}, "
        f"unloads {status.unloads}"
    )
    print(f"  janitor rounds completed here {status.janitor_rounds}")
    for model in status.loaded:
        print(f"    {model.model_id:40s} {_mib(model.size_bytes):>12s} in flight {model.in_flight}")


def _print_fleet(fleet: object) -> None:
    from mesh_proto import mesh_admin_pb2 as admin

    assert isinstance(fleet, admin.FleetStatusResponse)
    print(
        f"fleet: {len(fleet.pods)} pods, {fleet.models_registered} models registered, "
        f"{fleet.models_loaded} loaded, {fleet.copies} copies; janitor: {fleet.janitor or 'none'}"
    )
    print(f"  {'POD':16s} {'ENDPOINT':22s} {'CAPACITY':>12s} {'USED':>12s} {'MODELS':>7s} {'REQ/S':>7s}")
    for pod in fleet.pods:
        state = "  (shutting down)" if pod.shutting_down else ""
        print(
            f"  {pod.pod_id:16s} {pod.endpoint:22s} {_mib(pod.capacity_bytes):>12s} "
            f"{_mib(pod.used_bytes):>12s} {pod.models_loaded:7d} {pod.request_rate:7.1f}{state}"
        )
        for device in pod.devices:
            if device.name != "host":
                label = f"{device.name} {device.model}"
                capacity, used = _mib(device.capacity_bytes), _mib(device.used_bytes)
                print(f"  {'':16s} {label:22.22s} {capacity:>12s} {used:>12s}")


def _up(args: argparse.Namespace) -> int:
    import tempfile
    import time

    from mesh.fleet import LocalFleet

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


def _print_list(listing: object) -> None:
    from mesh_proto import mesh_admin_pb2 as admin

    assert isinstance(listing, admin.ListModelsResponse)
    print(f"{'MODEL':40s} {'TYPE':8s} {'STATUS':15s} {'SIZE':>12s}  PATH")
    for m in listing.models:
        print(f"{m.model_id:40s} {m.type:8s} {m.status:15s} {_mib(m.size_bytes):>12s}  {m.path}")
    for v in listing.vmodels:
        print(f"vmodel {v.vmodel_id} -> active {v.active_model_id}, target {v.target_model_id}")


def _watch(client: object, prefix: str) -> int:
    """Prints one line per ``WatchModels`` message until the pod ends the stream or Ctrl-C."""
    from mesh.edge.client import MeshClient

    assert isinstance(client, MeshClient)
    stream = client.watch_models(prefix)
    try:
        for change in stream:
            print(_change_line(change), flush=True)
    except KeyboardInterrupt:
        stream.cancel()
    return 0


def _change_line(change: object) -> str:
    from mesh_proto import mesh_admin_pb2 as admin

    assert isinstance(change, admin.ModelChange)
    if change.HasField("model"):
        m = change.model
        line = (
            f"model {m.model_id} {m.status} loaded={m.loaded_copies} loading={m.loading_copies} "
            f"failed={m.failed_copies} size={_mib(m.size_bytes)}"
        )
        if m.blocked:
            line += " BLOCKED"
        if m.failures:
            line += f" last failure on {m.failures[0].pod_id}: {m.failures[0].reason}"
        return line
    if change.HasField("vmodel"):
        v = change.vmodel
        return f"vmodel {v.vmodel_id} -> active {v.active_model_id}, target {v.target_model_id}"
    if change.deleted_model_id:
        return f"deleted model {change.deleted_model_id}"
    if change.deleted_vmodel_id:
        return f"deleted vmodel {change.deleted_vmodel_id}"
    return "synced (changes follow)"


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


if __name__ == "__main__":
    sys.exit(main())
