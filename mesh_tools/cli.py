"""The ``mesh`` command: run a pod or the controller, manage models, call them, run a local fleet
or the demo. ``main`` parses the flags (``mesh_tools.parser``) and hands each command to its
module: ``servers`` (serve, controller, up), ``client_commands`` (the pod's APIs), ``demo``.
Exit status: 0 done, 1 the mesh refused or failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import grpc

from mesh_common.errors import MeshError
from mesh_tools.client_commands import run_client_command
from mesh_tools.parser import build_parser
from mesh_tools.servers import run_controller, run_serve, run_up


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
        return run_serve(args)
    if args.command == "up":
        return run_up(args)
    if args.command == "controller":
        return run_controller(args)
    if args.command == "demo":
        from mesh_tools.demo import run_demo

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
    return run_client_command(args)


if __name__ == "__main__":
    sys.exit(main())
