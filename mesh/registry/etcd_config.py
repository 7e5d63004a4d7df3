"""How a pod reaches etcd: endpoints, credentials, TLS material and a root prefix.

Two sources. ``--etcd HOST:PORT[,HOST:PORT...]`` (plain gRPC, no credentials), or a JSON file in
the format ModelMesh keeps under the key ``etcd_connection`` of its ``model-serving-etcd`` Secret
(IBM etcd-java's ``etcd-json-schema.md``), so the same Secret serves a move from ModelMesh::

    {"endpoints": "https://etcd-0:2379,https://etcd-1:2379", "userid": "mesh",
     "password": "...", "root_prefix": "modelmesh-serving",
     "certificate_file": "ca.pem", "client_key_file": "k.pem", "client_certificate_file": "c.pem"}

Fields (only ``endpoints`` is required):

- ``endpoints``: comma-separated ``http://host:port``, ``https://host:port`` or ``host:port``
  (port 2379 when absent). Calls go to one; a failed one passes them to the next.
- ``userid`` / ``password``: etcd user authentication (both or neither).
- ``root_prefix``: where the mesh's keys live: ``<root_prefix>/mesh/<namespace>/...`` (trailing
  slashes dropped; ``""``: ``/mesh/<namespace>/``). Like ModelMesh's chroot, it lets one etcd
  serve several installations, and an etcd role can be limited to the prefix.
- ``certificate`` (PEM text) or ``certificate_file``: the CA that signed etcd's certificate.
- ``client_key`` / ``client_key_file`` and ``client_certificate`` / ``client_certificate_file``:
  a client certificate for etcd's ``--client-cert-auth`` (both or neither).
- ``override_authority``: the name checked against etcd's certificate instead of the host.

A ``*_file`` path that is not absolute is read beside the JSON file (as etcd-java does). TLS is
used when an endpoint says ``https://`` or any certificate is given. Errors name the file and the
field; no message ever quotes the password or a key.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_PORT = 2379
_FIELDS = (
    "endpoints",
    "userid",
    "password",
    "root_prefix",
    "certificate",
    "certificate_file",
    "client_key",
    "client_key_file",
    "client_certificate",
    "client_certificate_file",
    "override_authority",
)
_ENDPOINT = re.compile(
    r"(?:(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://)?(?P<host>\[[^\]]+\]|[^:/\[\]]+)(?::(?P<port>\d+))?/?"
)


class EtcdConfigError(ValueError):
    """A bad etcd connection setting; the message names where it came from and the field."""


@dataclass(frozen=True)
class EtcdEndpoint:
    host: str
    """Host name or address (an IPv6 address in brackets)."""
    port: int
    tls: bool

    @property
    def target(self) -> str:
        """What gRPC dials: ``host:port``."""
        return f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.target}"


@dataclass(frozen=True)
class EtcdConnection:
    endpoints: tuple[EtcdEndpoint, ...]
    userid: str | None = None
    password: str | None = field(default=None, repr=False)
    root_prefix: str = ""
    """Prepended to every key the mesh reads or writes (no trailing slash)."""
    ca_pem: bytes | None = field(default=None, repr=False)
    client_key_pem: bytes | None = field(default=None, repr=False)
    client_certificate_pem: bytes | None = field(default=None, repr=False)
    override_authority: str | None = None
    source: str = "--etcd"
    """Where these settings came from, for messages."""

    @property
    def tls(self) -> bool:
        return any(e.tls for e in self.endpoints)

    def summary(self) -> str:
        """For a log line: endpoints, user and prefix; never the password or keys."""
        user = f" as {self.userid!r}" if self.userid else ""
        prefix = f" under {self.root_prefix!r}" if self.root_prefix else ""
        return f"{','.join(str(e) for e in self.endpoints)}{user}{prefix}"

    @classmethod
    def from_endpoints(cls, text: str) -> EtcdConnection:
        """``HOST:PORT[,HOST:PORT...]`` as ``--etcd`` / ``MESH_ETCD`` give it: plain, no credentials."""
        endpoints = _endpoints(text, where="--etcd", tls_default=False)
        return cls(endpoints=endpoints)

    @classmethod
    def from_file(cls, path: Path) -> EtcdConnection:
        """Read ModelMesh's ``etcd_connection`` JSON. Raises ``EtcdConfigError`` naming the field."""
        where = f"etcd config {str(path)!r}"
        try:
            data = json.loads(path.read_text())
        except OSError as exc:
            raise EtcdConfigError(f"{where}: cannot read it ({exc.strerror or exc})") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise EtcdConfigError(f"{where}: not valid JSON ({_json_problem(exc)})") from None
        if not isinstance(data, dict):
            raise EtcdConfigError(f"{where}: expected a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_FIELDS))
        if unknown:
            raise EtcdConfigError(
                f"{where}: unknown field {unknown[0]!r} (known fields: {', '.join(_FIELDS)})"
            )
        for name, value in data.items():
            if not isinstance(value, str):
                raise EtcdConfigError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
        return cls._parse(data, path, where)

    @classmethod
    def _parse(cls, data: dict[str, str], path: Path, where: str) -> EtcdConnection:
        if not data.get("endpoints", "").strip():
            raise EtcdConfigError(f"{where}: field 'endpoints' is required (e.g. \"https://etcd:2379\")")
        userid, password = data.get("userid"), data.get("password")
        if (userid is None) != (password is None):
            given, missing = ("userid", "password") if userid is not None else ("password", "userid")
            raise EtcdConfigError(f"{where}: field {given!r} is given without {missing!r}")
        if userid is not None and not userid:
            raise EtcdConfigError(f"{where}: field 'userid' is empty")
        ca = _pem(data, "certificate", path, where)
        key = _pem(data, "client_key", path, where)
        cert = _pem(data, "client_certificate", path, where)
        if (key is None) != (cert is None):
            given = "client_key" if key is not None else "client_certificate"
            other = "client_certificate" if key is not None else "client_key"
            raise EtcdConfigError(f"{where}: field {given!r} is given without {other!r} (or its _file form)")
        has_tls_material = ca is not None or key is not None
        endpoints = _endpoints(
            data["endpoints"], where=f"{where}: field 'endpoints'", tls_default=has_tls_material
        )
        if has_tls_material and not all(e.tls for e in endpoints):
            raise EtcdConfigError(
                f"{where}: field 'endpoints' names an http:// endpoint, but certificates are given: use https://"
            )
        return cls(
            endpoints=endpoints,
            userid=userid,
            password=password,
            root_prefix=data.get("root_prefix", "").rstrip("/"),
            ca_pem=ca,
            client_key_pem=key,
            client_certificate_pem=cert,
            override_authority=data.get("override_authority") or None,
            source=str(path),
        )


def _endpoints(text: str, *, where: str, tls_default: bool) -> tuple[EtcdEndpoint, ...]:
    endpoints = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if "@" in item:  # user:password@host: the item must not be quoted back
            raise EtcdConfigError(
                f"{where}: an endpoint holds credentials ({item.rpartition('@')[2][:100]!r} after "
                "'@'): give them as fields 'userid' and 'password' of the etcd config instead"
            )
        match = _ENDPOINT.fullmatch(item)
        scheme = (match.group("scheme") or "").lower() if match else ""
        if match is None or scheme not in ("", "http", "https"):
            raise EtcdConfigError(
                f"{where}: {item[:100]!r} is not an etcd endpoint "
                "(http://host:port, https://host:port or host:port)"
            )
        port = int(match.group("port") or DEFAULT_PORT)
        if not 0 < port < 65536:
            raise EtcdConfigError(f"{where}: {item[:100]!r} has no valid port")
        tls = scheme == "https" or (scheme == "" and tls_default)
        endpoints.append(EtcdEndpoint(match.group("host"), port, tls))
    if not endpoints:
        raise EtcdConfigError(f"{where}: no endpoint given")
    if len({e.tls for e in endpoints}) > 1:
        raise EtcdConfigError(f"{where}: endpoints mix http:// and https://")
    return tuple(endpoints)


def _pem(data: dict[str, str], name: str, path: Path, where: str) -> bytes | None:
    """The PEM text of ``name`` (inline) or ``name_file`` (a path, relative to the config file)."""
    inline, file_name = data.get(name), data.get(f"{name}_file")
    if inline is not None and file_name is not None:
        raise EtcdConfigError(f"{where}: give {name!r} or {name + '_file'!r}, not both")
    if inline is not None:
        if "-----BEGIN" not in inline:
            raise EtcdConfigError(f"{where}: field {name!r} is not PEM text (no -----BEGIN line)")
        return inline.encode()
    if file_name is None:
        return None
    file = Path(file_name) if Path(file_name).is_absolute() else path.parent / file_name
    try:
        content = file.read_bytes()
    except OSError as exc:
        raise EtcdConfigError(
            f"{where}: field {name + '_file'!r}: cannot read {str(file)!r} ({exc.strerror or exc})"
        ) from None
    if b"-----BEGIN" not in content:
        raise EtcdConfigError(
            f"{where}: field {name + '_file'!r}: {str(file)!r} is not PEM (no -----BEGIN line)"
        )
    return content


def _json_problem(exc: json.JSONDecodeError | UnicodeDecodeError) -> str:
    """Where the JSON is broken, without quoting the document (it holds the password)."""
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    return "not UTF-8"
