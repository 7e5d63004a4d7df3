"""etcd goes away: loaded models keep serving, registry writes get UNAVAILABLE, and the pod
reconnects and resyncs when etcd returns. A pod cut off from etcd drops out of the others'
view once its lease runs out, and the calls already forwarded to it are still answered."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import joblib
import numpy as np
import pytest
import tritonclient.grpc as tc

from mesh.edge.client import MeshClient
from mesh.registry.etcd import prefix_end
from mesh_proto import etcd_pb2 as pb
from mesh_proto import etcd_pb2_grpc as pb_grpc
from mesh_proto import model_mesh_pb2 as mm
from mesh_tools.etcd_process import EtcdProcess
from tests.conftest import ModelSet, PodThread, pod_settings, wait_until
from tests.storage_servers import HttpFileServer, TcpRelay


def test_pod_serves_through_an_etcd_outage(tmp_path: Path, models: ModelSet) -> None:
    etcd = EtcdProcess(tmp_path / "etcd")
    etcd.start()
    try:
        with PodThread(pod_settings(etcd=etcd.endpoint, lease_ttl_s=5)) as pod:
            api = MeshClient(pod.target, timeout_s=20)
            api.register("iris", "sklearn", str(models.sklearn), load_now=True, sync=True)
            client = tc.InferenceServerClient(pod.target)
            tensor = tc.InferInput("input-0", [1, 4], "FP64")
            tensor.set_data_from_numpy(np.array([[5.1, 3.5, 1.4, 0.2]]))
            before = client.infer("iris", [tensor]).as_numpy("predict").tolist()

            etcd.stop()
            assert client.infer("iris", [tensor]).as_numpy("predict").tolist() == before
            with pytest.raises(grpc.RpcError) as info:
                api.register("other", "sklearn", str(models.sklearn))
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE
            assert "etcd" in (info.value.details() or "")
            assert api.status("iris").status == api.status("iris").LOADED  # reads come from the mirror

            etcd.start()  # same ports and data
            # A registration made straight into etcd reaches the pod's mirror once it reconnects.
            with PodThread(pod_settings(etcd=etcd.endpoint, pod_id="pod-b")) as other:
                MeshClient(other.target).register("late", "sklearn", str(models.sklearn))
            not_loaded = api.status("late").NOT_LOADED
            wait_until(
                lambda: api.status("late").status == not_loaded, within_s=20, what="the resync with etcd"
            )
            api.register("other", "sklearn", str(models.sklearn))
            assert client.infer("other", [tensor]).as_numpy("predict").tolist() == before
            client.close()
            api.close()
    finally:
        etcd.stop()


def test_loads_go_on_while_etcd_stalls_and_the_registry_is_corrected_after(
    tmp_path: Path, models: ModelSet
) -> None:
    """An etcd that stops answering (stalled on its disk, cut off by a partition) is not the same
    as one that is gone: every call waits out its timeout. A load records itself three times
    (the claim, LOADING, LOADED) and each eviction once, so cold calls would each wait several
    timeouts; the pod pays one and goes on, and once etcd answers again it writes what the
    registry missed: the copies loaded during the stall, and no copy for the models evicted."""
    etcd = EtcdProcess(tmp_path / "etcd")
    etcd.start()
    # Room for two of these models: each cold load during the stall evicts one.
    settings = pod_settings(etcd=etcd.endpoint, lease_ttl_s=60, capacity_bytes=200_000)
    try:
        with PodThread(settings) as pod:
            api = MeshClient(pod.target, timeout_s=20)
            warm, cold = ["warm-0", "warm-1"], [f"cold-{i}" for i in range(4)]
            for name in warm + cold:
                api.register(name, "sklearn", str(models.sklearn), load_now=name in warm, sync=name in warm)
            client = tc.InferenceServerClient(pod.target)
            tensor = tc.InferInput("input-0", [1, 4], "FP64")
            tensor.set_data_from_numpy(np.array([[5.1, 3.5, 1.4, 0.2]]))
            expected = joblib.load(models.sklearn).predict(np.array([[5.1, 3.5, 1.4, 0.2]])).tolist()

            assert etcd.process is not None
            etcd.process.send_signal(signal.SIGSTOP)
            try:
                # With a 5 s timeout per registry write, each of these calls would need 15 s or more.
                answers = [client.infer(name, [tensor], client_timeout=12) for name in cold]
            finally:
                etcd.process.send_signal(signal.SIGCONT)
            assert [a.as_numpy("predict").tolist() for a in answers] == [expected] * len(cold)

            def recorded() -> set[str]:
                return {n for n in warm + cold if api.status(n).status == api.status(n).LOADED}

            # Room for two, and the last cold model is held: a warm one recorded LOADED was evicted
            # during the stall (which one goes is the eviction policy's choice).
            held = {m.model_id for m in api.pod_status().loaded}
            assert cold[-1] in held and len(held) <= 2, f"the pod holds {sorted(held)}"
            wait_until(
                lambda: recorded() == held,
                within_s=30,
                what=f"the registry recording exactly the copies the pod holds, {sorted(held)}",
            )
            client.close()
            api.close()
    finally:
        if etcd.process is not None:
            etcd.process.send_signal(signal.SIGCONT)
        etcd.stop()


def test_a_call_forwarded_to_a_pod_that_drops_out_of_the_registry_is_answered(
    tmp_path: Path, models: ModelSet, http_files: HttpFileServer
) -> None:
    """A pod cut off from etcd (a partition, or etcd silent past the lease TTL) is dropped from the
    other pods' view when its lease runs out, though it still serves. A call one of them already
    forwarded to it is answered: the channel to the dropped pod is retired, not closed under the
    call (which ended the call with no status at all, and the caller waited out its deadline)."""
    etcd = EtcdProcess(tmp_path / "etcd")
    etcd.start()
    common = {"lease_ttl_s": 2.0, "publish_interval_s": 0.2, "capacity_bytes": 100_000}
    row = np.array([[5.1, 3.5, 1.4, 0.2]])
    expected = joblib.load(models.sklearn).predict(row).tolist()
    try:
        with (
            TcpRelay(etcd.endpoint) as relay,
            PodThread(pod_settings(etcd=etcd.endpoint, cache_dir=tmp_path / "a", **common)) as pod_a,
        ):
            api = MeshClient(pod_a.target, timeout_s=20)
            # Alone in the fleet, pod-a loads this one: the slow model's load then goes to the
            # emptier pod-b.
            api.register("filler", "sklearn", str(models.sklearn), load_now=True, sync=True)
            settings_b = pod_settings(etcd=relay.endpoint, pod_id="pod-b", cache_dir=tmp_path / "b", **common)
            with PodThread(settings_b):
                wait_until(lambda: len(api.fleet_status().pods) == 2, within_s=10, what="pod-a seeing pod-b")
                url = http_files.put("slow/model.joblib", models.sklearn.read_bytes())
                gate = http_files.gates["slow/model.joblib"] = threading.Event()
                api.register("slow", "sklearn", url)
                client = tc.InferenceServerClient(pod_a.target)
                tensor = tc.InferInput("input-0", [1, 4], "FP64")
                tensor.set_data_from_numpy(row)
                try:
                    with ThreadPoolExecutor(1) as pool:
                        answer = pool.submit(client.infer, "slow", [tensor], client_timeout=25)
                        try:
                            wait_until(
                                lambda: http_files.gets["slow/model.joblib"] > 0,
                                within_s=10,
                                what="pod-b fetching the model for the forwarded call",
                            )
                            copies = {c.location: c.copyStatus for c in api.status("slow").modelCopyInfos}
                            assert list(copies) == ["pod-b"], copies
                            relay.cut()
                            wait_until(
                                lambda: [p.pod_id for p in api.fleet_status().pods] == ["pod-a"],
                                within_s=15,
                                what="pod-a dropping pod-b once its lease ran out",
                            )
                        finally:
                            gate.set()
                        result = answer.result(timeout=30)
                finally:
                    client.close()
                assert result.as_numpy("predict").tolist() == expected
            api.close()
    finally:
        etcd.stop()


def test_after_an_etcd_stall_longer_than_the_lease_the_registry_shows_every_live_copy(
    tmp_path: Path, models: ModelSet
) -> None:
    """etcd stalls past the lease TTL: when it answers again every pod's lease has run out, its
    instance record is gone and the janitor forgets the copies recorded for it, though the pod
    serves them all along. Each pod rejoins with a new lease and writes back what it holds: the
    registry shows every copy again, the models read LOADED, and calls for them load no
    duplicates elsewhere."""
    etcd = EtcdProcess(tmp_path / "etcd")
    etcd.start()
    common = {"lease_ttl_s": 2.0, "publish_interval_s": 0.2, "janitor_interval_s": 0.3}
    names = [f"m-{i}" for i in range(6)]
    pod_ids = ["pod-a", "pod-b", "pod-c"]
    row = np.array([[5.1, 3.5, 1.4, 0.2]])
    expected = joblib.load(models.sklearn).predict(row).tolist()
    try:
        with contextlib.ExitStack() as stack:
            pods = [
                stack.enter_context(
                    PodThread(pod_settings(etcd=etcd.endpoint, pod_id=p, cache_dir=tmp_path / p, **common))
                )
                for p in pod_ids
            ]
            apis = [stack.enter_context(MeshClient(p.target, timeout_s=20)) for p in pods]
            wait_until(lambda: len(apis[0].fleet_status().pods) == 3, within_s=10, what="a fleet of three")
            for i, name in enumerate(names):  # each through another pod: placement spreads them
                apis[i % 3].register(name, "sklearn", str(models.sklearn), load_now=True, sync=True)

            def held() -> dict[str, set[str]]:
                """Model -> the pods whose cache holds it loaded."""
                holders: dict[str, set[str]] = {name: set() for name in names}
                for pod_id, api in zip(pod_ids, apis, strict=True):
                    for model in api.pod_status().loaded:
                        holders[model.model_id].add(pod_id)
                return holders

            def recorded(api: MeshClient) -> dict[str, set[str]]:
                """Model -> the pods the registry (this pod's mirror of it) shows holding it."""
                loaded = mm.ModelStatusInfo.LOADED
                return {
                    name: {c.location for c in api.status(name).modelCopyInfos if c.copyStatus == loaded}
                    for name in names
                }

            before = held()
            assert all(len(pods) == 1 for pods in before.values()), before
            assert len(set().union(*before.values())) >= 2, f"the models went to one pod: {before}"
            wait_until(
                lambda: all(recorded(api) == before for api in apis), within_s=10, what="every pod's mirror"
            )

            old_leases = set(instance_leases(etcd.endpoint).values())
            assert etcd.process is not None
            etcd.process.send_signal(signal.SIGSTOP)
            try:
                # The stall itself: past the 2 s lease, so etcd expires every pod's lease on waking.
                time.sleep(3.5)
            finally:
                etcd.process.send_signal(signal.SIGCONT)
            resumed = time.monotonic()

            def whole() -> bool:
                leases = instance_leases(etcd.endpoint)
                new = sorted(leases) == pod_ids and not old_leases & set(leases.values())
                return new and all(len(api.fleet_status().pods) == 3 for api in apis)

            wait_until(whole, within_s=15, what="every pod rejoining the fleet under a new lease")
            rejoined = time.monotonic()
            wait_until(
                lambda: all(recorded(api) == held() for api in apis),
                within_s=10,
                what=f"the registry showing the copies the pods hold, {held()} (pod-a: {recorded(apis[0])})",
            )
            now = time.monotonic()
            print(
                f"the registry matched the pods' caches {now - resumed:.2f}s after etcd resumed, "
                f"{now - rejoined:.2f}s after every pod was back in the fleet"
            )

            # Calls for every model through every pod are served by the copies there are.
            clients = [tc.InferenceServerClient(p.target) for p in pods]
            for client in clients:
                stack.callback(client.close)
            tensor = tc.InferInput("input-0", [1, 4], "FP64")
            tensor.set_data_from_numpy(row)
            for client in clients:
                for name in names:
                    assert client.infer(name, [tensor]).as_numpy("predict").tolist() == expected
            after = held()
            assert {n: len(p) for n, p in after.items()} == {n: len(p) for n, p in before.items()}, (
                f"copies before the stall {before}, after {after}"
            )
            assert all(recorded(api) == after for api in apis)
    finally:
        if etcd.process is not None:
            etcd.process.send_signal(signal.SIGCONT)
        etcd.stop()


def instance_leases(endpoint: str) -> dict[str, int]:
    """Pod id -> the lease its instance record lives under, read from etcd."""
    prefix = b"/mesh/default/instances/"
    with grpc.insecure_channel(endpoint) as channel:
        request = pb.RangeRequest(key=prefix, range_end=prefix_end(prefix))
        response = pb_grpc.KVStub(channel).Range(request, timeout=5)
    return {kv.key[len(prefix) :].decode(): kv.lease for kv in response.kvs}
