"""The ``mesh`` command line: its commands and their flags (``mesh --help``). No command runs here."""

from __future__ import annotations

import argparse
import os

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
    """Every ``mesh`` command with its flags, in the order ``mesh --help`` lists them."""
    parser = argparse.ArgumentParser(prog="mesh", description="Multi-model serving mesh")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_serve(commands)
    _add_up(commands)
    _add_client_commands(commands)
    _add_controller(commands)
    _add_demo(commands)
    return parser


def _add_serve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``mesh serve``: one pod."""
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


def _add_up(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``mesh up``: a local fleet on loopback."""
    up = commands.add_parser("up", help="run a local fleet: an etcd and N pods on loopback")
    up.add_argument("--pods", type=int, default=3, help="number of pods")
    up.add_argument("--etcd", default=None, help="HOST:PORT of an etcd to use (default: start one)")
    up.add_argument("--port", type=int, default=8033, help="pod i listens on PORT+i (0: free ports)")
    up.add_argument("--capacity", default=None, help="model bytes per pod, e.g. 512MiB")
    up.add_argument(
        "--storage-config", default=None, help="storage-config directory or JSON file, shared by every pod"
    )


def _with_target(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument(
        "--target",
        default=os.environ.get("MESH_TARGET", DEFAULT_TARGET),
        help=f"pod address (default $MESH_TARGET or {DEFAULT_TARGET})",
    )
    return p


def _add_client_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The commands that call a pod's APIs at ``--target``."""
    register = _with_target(commands.add_parser("register", help="register a model"))
    register.add_argument("model_id")
    register.add_argument("--type", required=True, help="sklearn, onnx or pytorch")
    register.add_argument("--path", required=True, help="local path or URI of the artifact")
    register.add_argument("--key", default="", help='storage key JSON, e.g. {"storage_key": "s3"}')
    register.add_argument("--tenant", help="the tenant the model belongs to (default: default)")
    register.add_argument("--min-copies", type=int, help="copies kept loaded while the model is loaded")
    register.add_argument("--max-copies", type=int, help="most copies the janitor adds under load")
    register.add_argument("--load-now", action="store_true")
    register.add_argument("--sync", action="store_true", help="with --load-now: wait for the load")

    unregister = _with_target(commands.add_parser("unregister", help="unregister a model"))
    unregister.add_argument("model_id")

    clear = _with_target(
        commands.add_parser("clear", help="forget a model's load failures and crashes: it may load again")
    )
    clear.add_argument("model_id")

    status = _with_target(
        commands.add_parser("status", help="a model's copies, placement and history; or the fleet's")
    )
    status.add_argument("model_id", nargs="?")

    tenant = commands.add_parser("tenant", help="tenant caps").add_subparsers(dest="action", required=True)
    tset = _with_target(tenant.add_parser("set", help="set a tenant's caps (0: no cap)"))
    tset.add_argument("tenant")
    tset.add_argument("--max-models", type=int, default=0, help="registered models")
    tset.add_argument(
        "--max-loaded", type=parse_size, default=0, help="bytes loaded across the fleet, e.g. 2GiB"
    )
    _with_target(tenant.add_parser("list", help="tenants with their caps and use"))

    listing = _with_target(commands.add_parser("list", help="list registered models and vmodels"))
    listing.add_argument("--prefix", default="")

    watch = _with_target(
        commands.add_parser("watch", help="models and vmodels, then each change as it happens (Ctrl-C ends)")
    )
    watch.add_argument("--prefix", default="", help="only ids that start with it")

    vmodel = commands.add_parser("vmodel", help="manage vmodels").add_subparsers(dest="action", required=True)
    vset = _with_target(vmodel.add_parser("set", help="create a vmodel or point it at a new target"))
    vset.add_argument("vmodel_id")
    vset.add_argument("target_model_id")
    vset.add_argument("--type", help="register the target with this type")
    vset.add_argument("--path", help="register the target with this path")
    vset.add_argument("--owner", default="")
    vset.add_argument("--force", action="store_true", help="make the target active at once")
    vset.add_argument("--sync", action="store_true", help="wait for the transition")
    vset.add_argument("--auto-delete", action="store_true", help="delete the target when unused")
    vget = _with_target(vmodel.add_parser("get", help="a vmodel's status"))
    vget.add_argument("vmodel_id")
    vdel = _with_target(vmodel.add_parser("delete", help="delete a vmodel"))
    vdel.add_argument("vmodel_id")

    infer = _with_target(commands.add_parser("infer", help="call a model"))
    infer.add_argument("model")
    infer.add_argument(
        "--input",
        action="append",
        required=True,
        metavar="NAME:DTYPE:SHAPE:JSON",
        help="e.g. input-0:FP32:1,4:[[5.1,3.5,1.4,0.2]] (repeat per input)",
    )
    infer.add_argument("--output", action="append", default=[], help="output name (repeat)")


def _add_controller(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``mesh controller``: Predictors and InferenceServices of Kubernetes -> the mesh."""
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


def _add_demo(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``mesh demo``: hundreds of real models on a small local fleet."""
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
