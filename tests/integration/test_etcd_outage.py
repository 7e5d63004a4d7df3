"""etcd goes away: loaded models keep serving, registry writes get UNAVAILABLE, and the pod
reconnects and resyncs when etcd returns."""

from __future__ import annotations

import signal
from pathlib import Path

import grpc
import joblib
import numpy as np
import pytest
import tritonclient.grpc as tc

from mesh.edge.client import MeshClient
from mesh.etcd_process import EtcdProcess
from tests.conftest import ModelSet, PodThread, pod_settings, wait_until


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
