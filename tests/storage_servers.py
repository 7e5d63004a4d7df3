"""Real storage endpoints on loopback for the puller's tests, each counting what it serves.

- ``S3Server``: moto's S3 in server mode (its WSGI app in a threaded werkzeug server), behind a
  small middleware that counts object GETs and can refuse a wrong access key (403), cut a
  response halfway, or flip a byte of one (for the fault tests).
- ``GcsServer``: ``gcp-storage-emulator`` on a free port (``STORAGE_EMULATOR_HOST``).
- ``HttpFileServer``: a threaded ``http.server`` serving files from memory with ETags,
  optional ``Content-MD5``, a required header, the same faults, and gates that hold a
  download until the test opens them.
- ``TcpRelay``: relays loopback TCP connections to a service until it is cut (a network
  partition between one client and that service).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import socket
import ssl
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import BaseServer
from typing import Any, Self
from urllib.parse import unquote, urlsplit

import boto3
from botocore.config import Config
from werkzeug.serving import make_server

from mesh_tools.etcd_process import free_port

ACCESS_KEY = "mesh-test-key"
SECRET_KEY = "mesh-test-secret-do-not-log"


class Faults:
    """Faults to inject, keyed by object name: each count is used up one response at a time."""

    def __init__(self) -> None:
        self.cut: Counter[str] = Counter()
        self.corrupt: Counter[str] = Counter()
        self._lock = threading.Lock()

    def take(self, kind: Counter[str], name: str) -> bool:
        with self._lock:
            if kind[name] > 0:
                kind[name] -= 1
                return True
            return False


def _cut(body: Iterable[bytes]) -> Iterator[bytes]:
    data = b"".join(body)
    yield data[: len(data) // 2]
    raise ConnectionResetError("cut halfway by the test server")


def _flip(body: Iterable[bytes]) -> Iterator[bytes]:
    data = bytearray(b"".join(body))
    if data:
        data[len(data) // 2] ^= 0xFF
    yield bytes(data)


class _ServedInThread:
    """A ``socketserver`` server run on a daemon thread while the ``with`` block lasts."""

    def _serve(self, server: BaseServer, name: str) -> None:
        self._server_of_thread = server
        self._thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server_of_thread.shutdown()
        self._server_of_thread.server_close()
        self._thread.join(timeout=5)


class S3Server(_ServedInThread):
    def __init__(self) -> None:
        from moto.server import DomainDispatcherApplication, create_backend_app

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.gets: Counter[str] = Counter()
        self.faults = Faults()
        self._app = DomainDispatcherApplication(create_backend_app)
        self._server = make_server("127.0.0.1", 0, self._middleware, threaded=True)
        self.endpoint = f"http://127.0.0.1:{self._server.server_port}"
        self._serve(self._server, "s3")

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}),
        )

    def storage_entry(self, **extra: str) -> dict[str, str]:
        """A storage-config entry for this endpoint, in ModelMesh's format."""
        return {
            "type": "s3",
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
            "endpoint_url": self.endpoint,
            "region": "us-east-1",
            **extra,
        }

    def _middleware(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        auth = environ.get("HTTP_AUTHORIZATION", "")
        if auth and f"Credential={ACCESS_KEY}/" not in auth:
            start_response("403 Forbidden", [("Content-Type", "application/xml")])
            return [b"<Error><Code>InvalidAccessKeyId</Code><Message>denied</Message></Error>"]
        name = unquote(environ.get("PATH_INFO", "")).lstrip("/")
        body = self._app(environ, start_response)
        if environ["REQUEST_METHOD"] != "GET" or environ.get("QUERY_STRING", "").startswith("list-type"):
            return body
        self.gets[name] += 1
        if self.faults.take(self.faults.cut, name):
            return _cut(body)
        if self.faults.take(self.faults.corrupt, name):
            return _flip(body)
        return body


class GcsServer:
    def __init__(self) -> None:
        from gcp_storage_emulator.server import create_server

        logging.getLogger("gcp_storage_emulator").setLevel(logging.WARNING)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server = create_server("127.0.0.1", self.port, in_memory=True)

    def __enter__(self) -> GcsServer:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    def client(self) -> Any:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project="test", credentials=AnonymousCredentials(), client_options={"api_endpoint": self.endpoint}
        )


class HttpFileServer(_ServedInThread):
    """Serves ``files[path] = bytes``; counts GETs per path; optional auth header and faults."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.files: dict[str, bytes] = {}
        self.content_md5: dict[str, str] = {}
        self.gets: Counter[str] = Counter()
        self.faults = Faults()
        self.required_header: tuple[str, str] | None = None
        self.gates: dict[str, threading.Event] = {}
        """A download of one of these paths waits (up to 60 s) until its event is set."""
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self._server.server_address[1]}"
        self._serve(self._server, "http-files")

    def put(self, path: str, data: bytes, *, content_md5: bool = True) -> str:
        self.files[path] = data
        if content_md5:
            self.content_md5[path] = base64.b64encode(hashlib.md5(data).digest()).decode()
        return f"{self.url}/{path}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        files = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return None

            def do_HEAD(self) -> None:
                self._answer(send_body=False)

            def do_GET(self) -> None:
                self._answer(send_body=True)

            def _answer(self, *, send_body: bool) -> None:
                path = urlsplit(self.path).path.lstrip("/")
                if files.required_header is not None:
                    name, value = files.required_header
                    if self.headers.get(name) != value:
                        self.send_response(403)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                data = files.files.get(path)
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if send_body:
                    files.gets[path] += 1
                    gate = files.gates.get(path)
                    if gate is not None:
                        gate.wait(60)
                if send_body and files.faults.take(files.faults.corrupt, path):
                    data = _flip_bytes(data)
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("ETag", f'"{hashlib.sha256(files.files[path]).hexdigest()[:16]}"')
                if path in files.content_md5:
                    self.send_header("Content-MD5", files.content_md5[path])
                self.end_headers()
                if not send_body:
                    return
                if files.faults.take(files.faults.cut, path):
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(data)

        return Handler


def _flip_bytes(data: bytes) -> bytes:
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0xFF
    return bytes(flipped)


class TcpRelay:
    """Relays loopback TCP connections to ``target`` (``host:port``) until ``cut``: then every
    relayed connection closes and new ones are refused, as in a partition between the clients
    that connect through ``endpoint`` and the service. ``partition`` does the same until ``heal``."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self._target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._cut = False
        self._refusing = False
        threading.Thread(target=self._accept, name="tcp-relay", daemon=True).start()

    def partition(self) -> None:
        """Close every relayed connection and refuse new ones until ``heal``."""
        with self._lock:
            self._refusing = True
            sockets, self._open = self._open, []
        for sock in sockets:
            _close(sock)

    def heal(self) -> None:
        with self._lock:
            self._refusing = False

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            sockets, self._open = self._open, []
        self._listener.close()
        for sock in sockets:
            _close(sock)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cut()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # cut
                return
            with self._lock:
                refusing = self._refusing
            if refusing:
                _close(client)
                continue
            try:
                upstream = socket.create_connection(self._target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self._lock:
                if self._cut:
                    _close(client)
                    _close(upstream)
                    return
                self._open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(source, sink), name="relay-pump", daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(1 << 16):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        _close(sink)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
