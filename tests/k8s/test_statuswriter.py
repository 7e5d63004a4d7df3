"""The real ``KubeStatusWriter`` through the ``kubernetes`` client, against a tiny HTTP server on
127.0.0.1 standing in for the API server's status endpoint.

No Kubernetes API server can run on these machines (none is installable from any reachable
registry), so this checks the request the client sends -- URL path, method, content type, body --
not what a real API server makes of it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubernetes import client

from mesh.k8s.resources import Kind, ResourceRef
from mesh.k8s.statuswriter import KubeStatusWriter
from mesh_common.errors import ResourceGone


class StatusEndpoint(ThreadingHTTPServer):
    def __init__(self, answer: int = 200) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict[str, Any]] = []
        self.answer = answer

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: StatusEndpoint

    def do_PATCH(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(
            {"method": "PATCH", "path": self.path, "content_type": self.headers["Content-Type"], "body": body}
        )
        answer = json.dumps({"kind": "Predictor", **body}).encode()
        if self.server.answer != 200:
            answer = json.dumps({"kind": "Status", "code": self.server.answer, "reason": "NotFound"}).encode()
        self.send_response(self.server.answer)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def endpoint() -> Iterator[StatusEndpoint]:
    server = StatusEndpoint()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def _writer(url: str) -> tuple[KubeStatusWriter, client.ApiClient]:
    config = client.Configuration(host=url)
    api = client.ApiClient(config)
    return KubeStatusWriter(api), api


async def test_status_is_merge_patched_into_the_status_subresource(endpoint: StatusEndpoint) -> None:
    writer, api = _writer(endpoint.url)
    status = {"available": True, "activeModelState": "Loaded", "lastFailureInfo": None, "totalCopies": 2}
    try:
        await writer.write(ResourceRef(Kind.PREDICTOR, "team-a", "iris"), status)
        await writer.write(ResourceRef(Kind.INFERENCE_SERVICE, "team-b", "mnist"), {"modelStatus": {}})
    finally:
        api.close()
    first, second = endpoint.requests
    assert first["method"] == "PATCH"
    assert first["path"] == "/apis/serving.kserve.io/v1alpha1/namespaces/team-a/predictors/iris/status"
    assert first["content_type"] == "application/merge-patch+json"
    assert first["body"] == {"status": status}  # a null removes the field
    assert (
        second["path"] == "/apis/serving.kserve.io/v1beta1/namespaces/team-b/inferenceservices/mnist/status"
    )


async def test_a_refused_write_raises(endpoint: StatusEndpoint) -> None:
    writer, api = _writer(endpoint.url)
    try:
        endpoint.answer = 404
        with pytest.raises(ResourceGone):
            await writer.write(ResourceRef(Kind.PREDICTOR, "team-a", "gone"), {"available": False})
        endpoint.answer = 500
        with pytest.raises(client.ApiException) as refused:
            await writer.write(ResourceRef(Kind.PREDICTOR, "team-a", "m"), {"available": False})
    finally:
        api.close()
    assert refused.value.status == 500
