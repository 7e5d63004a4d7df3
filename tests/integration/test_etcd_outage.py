"""etcd goes away: loaded models keep serving, registry writes get UNAVAILABLE, and the pod
reconnects and resyncs when etcd returns."""

from __future__ import annotations

from pathlib import Path

import grpc
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
