"""The ``mesh`` commands that call a pod's APIs: register, unregister, clear, status, list, watch,
vmodel, tenant and infer. Each opens one ``MeshClient`` to ``--target`` and prints the answer."""

from __future__ import annotations

import argparse
import json

import numpy as np

from mesh_tools.printing import (
    change_line,
    print_detail,
    print_fleet,
    print_list,
    print_pod,
    print_status,
    print_tenants,
)


def run_client_command(args: argparse.Namespace) -> int:
    """Runs one client command against ``args.target``; returns the process's exit status."""
    from mesh.edge.client import MeshClient

    with MeshClient(args.target) as client:
        if args.command == "register":
            key = _model_key(
                args.key, tenant=args.tenant, min_copies=args.min_copies, max_copies=args.max_copies
            )
            status = client.register(
                args.model_id, args.type, args.path, key=key, load_now=args.load_now, sync=args.sync
            )
            print_status(args.model_id, status)
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
                print_detail(client.describe(args.model_id))
            else:
                print_fleet(client.fleet_status())
                print_pod(client.pod_status())
        elif args.command == "list":
            print_list(client.list_models(args.prefix))
        elif args.command == "watch":
            return _watch(client, args.prefix)
        elif args.command == "vmodel":
            return _vmodel(client, args)
        elif args.command == "tenant":
            _tenant(client, args)
        elif args.command == "infer":
            inputs = dict(parse_input(spec) for spec in args.input)
            for name, value in client.infer(args.model, inputs, args.output).items():
                print(f"{name}: {json.dumps(_jsonable(value))}")
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


def _tenant(client: object, args: argparse.Namespace) -> None:
    from mesh.edge.client import MeshClient

    assert isinstance(client, MeshClient)
    if args.action == "set":
        print_tenants(
            [client.set_tenant(args.tenant, max_models=args.max_models, max_loaded_bytes=args.max_loaded)]
        )
    else:
        print_tenants(client.tenants().tenants)


def _watch(client: object, prefix: str) -> int:
    """Prints one line per ``WatchModels`` message until the pod ends the stream or Ctrl-C."""
    from mesh.edge.client import MeshClient

    assert isinstance(client, MeshClient)
    stream = client.watch_models(prefix)
    try:
        for change in stream:
            print(change_line(change), flush=True)
    except KeyboardInterrupt:
        stream.cancel()
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
