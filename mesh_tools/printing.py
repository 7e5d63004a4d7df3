"""How ``mesh`` commands print what the mesh's APIs answer: one line per copy, pod, tenant or change.

Sizes print in MiB, times as the local wall clock's ``HH:MM:SS``. Each function takes the
message its call returns (typed ``object`` so the generated classes load only when printing).
"""

from __future__ import annotations

from collections.abc import Sequence


def print_status(model_id: str, status: object) -> None:
    from mesh_proto import model_mesh_pb2 as mm

    assert isinstance(status, mm.ModelStatusInfo)
    print(f"{model_id}: {mm.ModelStatusInfo.ModelStatus.Name(status.status)}")
    for copy in status.modelCopyInfos:
        print(f"  {copy.location}: {mm.ModelStatusInfo.ModelStatus.Name(copy.copyStatus)}")
    for error in status.errors:
        print(f"  error: {error}")


def print_detail(detail: object) -> None:
    from mesh_proto import mesh_admin_pb2 as admin

    assert isinstance(detail, admin.ModelDetail)
    copies = f"copies {detail.min_copies}..{detail.max_copies or 'default'}"
    print(f"{detail.model_id}: {detail.status}  ({detail.type}, tenant {detail.tenant}, {copies})")
    print(f"  path {detail.path}")
    if detail.size_bytes:
        print(f"  size {mib(detail.size_bytes)}, last load {detail.load_ms} ms")
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


def print_tenants(tenants: Sequence[object]) -> None:
    from mesh_proto import mesh_admin_pb2 as admin

    print(f"{'TENANT':24s} {'MODELS':>7s} {'CAP':>7s} {'LOADED':>12s} {'CAP':>12s}")
    for t in tenants:
        assert isinstance(t, admin.TenantStatus)
        model_cap = str(t.max_models) if t.max_models else "-"
        bytes_cap = mib(t.max_loaded_bytes) if t.max_loaded_bytes else "-"
        loaded = mib(t.loaded_bytes)
        print(f"{t.tenant:24s} {t.models_registered:7d} {model_cap:>7s} {loaded:>12s} {bytes_cap:>12s}")


def print_pod(status: object) -> None:
    from mesh_proto import mesh_admin_pb2 as admin

    assert isinstance(status, admin.PodStatusResponse)
    print(f"pod {status.pod_id} (mesh {status.version})")
    print(
        f"  capacity {mib(status.capacity_bytes)}, used {mib(status.used_bytes)}, "
        f"{len(status.loaded)} models loaded"
    )
    print(
        f"  loads {status.loads}, load failures {status.load_failures}, evictions {status.evictions}, "
        f"unloads {status.unloads}"
    )
    print(f"  janitor rounds completed here {status.janitor_rounds}")
    for model in status.loaded:
        print(f"    {model.model_id:40s} {mib(model.size_bytes):>12s} in flight {model.in_flight}")


def print_fleet(fleet: object) -> None:
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
            f"  {pod.pod_id:16s} {pod.endpoint:22s} {mib(pod.capacity_bytes):>12s} "
            f"{mib(pod.used_bytes):>12s} {pod.models_loaded:7d} {pod.request_rate:7.1f}{state}"
        )
        for device in pod.devices:
            if device.name != "host":
                label = f"{device.name} {device.model}"
                capacity, used = mib(device.capacity_bytes), mib(device.used_bytes)
                print(f"  {'':16s} {label:22.22s} {capacity:>12s} {used:>12s}")


def print_list(listing: object) -> None:
    from mesh_proto import mesh_admin_pb2 as admin

    assert isinstance(listing, admin.ListModelsResponse)
    print(f"{'MODEL':40s} {'TYPE':8s} {'STATUS':15s} {'SIZE':>12s}  PATH")
    for m in listing.models:
        print(f"{m.model_id:40s} {m.type:8s} {m.status:15s} {mib(m.size_bytes):>12s}  {m.path}")
    for v in listing.vmodels:
        print(f"vmodel {v.vmodel_id} -> active {v.active_model_id}, target {v.target_model_id}")


def change_line(change: object) -> str:
    from mesh_proto import mesh_admin_pb2 as admin

    assert isinstance(change, admin.ModelChange)
    if change.HasField("model"):
        m = change.model
        line = (
            f"model {m.model_id} {m.status} loaded={m.loaded_copies} loading={m.loading_copies} "
            f"failed={m.failed_copies} size={mib(m.size_bytes)}"
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


def mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"
