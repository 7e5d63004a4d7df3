"""ModelMesh's ``etcd_connection`` JSON read as the pod reads it, and the settings around it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mesh.registry.etcd_config import EtcdConfigError, EtcdConnection, EtcdEndpoint
from mesh.settings import MeshSettings

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
SECRET = "s3cr3t-do-not-echo"


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "etcd_connection"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_modelmesh_example_reads_every_field(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text(PEM)
    (tmp_path / "key.pem").write_text(PEM.replace("CERTIFICATE", "PRIVATE KEY"))
    path = write(
        tmp_path,
        {
            "endpoints": "https://etcd-0:2379, https://etcd-1:32379,etcd-2",
            "userid": "mesh",
            "password": SECRET,
            "root_prefix": "modelmesh-serving/",
            "certificate_file": "ca.pem",
            "client_key_file": str(tmp_path / "key.pem"),
            "client_certificate": PEM,
            "override_authority": "etcd.internal",
        },
    )
    c = EtcdConnection.from_file(path)
    assert c.endpoints == (
        EtcdEndpoint("etcd-0", 2379, True),
        EtcdEndpoint("etcd-1", 32379, True),
        EtcdEndpoint("etcd-2", 2379, True),  # bare host: the default port; TLS since certificates are given
    )
    assert (c.userid, c.password, c.root_prefix, c.override_authority) == (
        "mesh",
        SECRET,
        "modelmesh-serving",
        "etcd.internal",
    )
    assert c.ca_pem == PEM.encode() and c.client_certificate_pem == PEM.encode()
    assert c.client_key_pem is not None and b"PRIVATE KEY" in c.client_key_pem
    assert SECRET not in repr(c) and SECRET not in c.summary()


def test_plain_endpoints_and_ipv6() -> None:
    c = EtcdConnection.from_endpoints("127.0.0.1:2379,[::1]:2380,http://etcd:1")
    assert [str(e) for e in c.endpoints] == ["http://127.0.0.1:2379", "http://[::1]:2380", "http://etcd:1"]
    assert [e.target for e in c.endpoints] == ["127.0.0.1:2379", "[::1]:2380", "etcd:1"]
    assert not c.tls and c.userid is None and c.root_prefix == ""


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ("{not json", "not valid JSON"),
        ('["endpoints"]', "expected a JSON object"),
        ({"endpoints": "etcd:2379", "user": "mesh"}, "unknown field 'user'"),
        ({"endpoints": "etcd:2379", "userid": "mesh"}, "field 'userid' is given without 'password'"),
        ({"endpoints": "etcd:2379", "password": SECRET}, "field 'password' is given without 'userid'"),
        ({"userid": "mesh", "password": SECRET}, "field 'endpoints' is required"),
        ({"endpoints": "a:1", "userid": "", "password": SECRET}, "field 'userid' is empty"),
        ({"endpoints": 2379}, "field 'endpoints' must be a string"),
        ({"endpoints": "ftp://etcd:2379"}, "field 'endpoints': 'ftp://etcd:2379' is not an etcd endpoint"),
        ({"endpoints": "http://a:1,https://b:1"}, "endpoints mix http:// and https://"),
        ({"endpoints": "http://a:1", "certificate": PEM}, "names an http:// endpoint, but certificates"),
        ({"endpoints": "a:1", "certificate": "abc"}, "field 'certificate' is not PEM"),
        ({"endpoints": "a:1", "certificate": PEM, "certificate_file": "x"}, "not both"),
        ({"endpoints": "a:1", "certificate_file": "missing.pem"}, "field 'certificate_file': cannot read"),
        ({"endpoints": "a:1", "client_key": PEM}, "field 'client_key' is given without 'client_certificate'"),
    ],
)
def test_bad_config_names_file_and_field_never_the_password(tmp_path: Path, data: object, named: str) -> None:
    path = write(tmp_path, data)
    with pytest.raises(EtcdConfigError) as error:
        EtcdConnection.from_file(path)
    message = str(error.value)
    assert named in message and str(path) in message
    assert SECRET not in message


def test_bad_json_holding_the_password_is_not_quoted(tmp_path: Path) -> None:
    path = write(tmp_path, '{"endpoints": "etcd:2379", "password": "' + SECRET + '" "userid": "x"}')
    with pytest.raises(EtcdConfigError, match=r"not valid JSON \(Expecting ',' delimiter at line 1") as error:
        EtcdConnection.from_file(path)
    assert SECRET not in str(error.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(EtcdConfigError, match=r"etcd config .*nowhere.json.*cannot read it"):
        EtcdConnection.from_file(tmp_path / "nowhere.json")


def test_etcd_and_etcd_config_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"give etcd .* or etcd_config .*, not both"):
        MeshSettings(etcd="127.0.0.1:2379", etcd_config=tmp_path / "etcd_connection")


def test_capacity_from_the_memory_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    assert MeshSettings(memory_limit="2Gi").capacity_bytes == 2**30  # default fraction: half
    assert MeshSettings(memory_limit=4 * 2**30, capacity_fraction=0.25).capacity_bytes == 2**30
    assert MeshSettings(memory_limit="2Gi", capacity_bytes="100MiB").capacity_bytes == 100 * 2**20
    monkeypatch.setenv("MESH_MEMORY_LIMIT", "1073741824")  # what the downward API gives: bytes
    monkeypatch.setenv("MESH_CAPACITY_FRACTION", "0.75")
    assert MeshSettings().capacity_bytes == 3 * 2**28
    monkeypatch.setenv("MESH_CAPACITY_BYTES", "1Mi")  # an explicit capacity wins
    assert MeshSettings().capacity_bytes == 2**20
    for fraction in (0, 1.5):
        with pytest.raises(ValueError, match="capacity_fraction"):
            MeshSettings(memory_limit="1Gi", capacity_fraction=fraction)


def test_serve_flags_win_over_variables_and_variables_fill_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mesh_tools.parser import build_parser
    from mesh_tools.servers import serve_settings

    monkeypatch.setenv("MESH_HOST", "0.0.0.0")
    monkeypatch.setenv("MESH_ADVERTISE_HOST", "127.0.0.2")
    monkeypatch.setenv("MESH_PORT", "9000")
    monkeypatch.setenv("MESH_MEMORY_LIMIT", "8Gi")
    config = write(tmp_path, {"endpoints": "127.0.0.1:2379"})
    args = build_parser().parse_args(
        [
            "serve",
            "--memory-limit",
            "2Gi",
            "--capacity-fraction",
            "0.25",
            "--etcd-config",
            str(config),
            "--handoff-timeout",
            "12",
            "--metrics-port",
            "-1",
        ]
    )
    s = serve_settings(args)
    assert (s.host, s.port, s.metrics_port) == ("0.0.0.0", 9000, None)
    assert (s.memory_limit, s.capacity_bytes, s.handoff_timeout_s) == (2 * 2**30, 2**29, 12.0)
    assert s.etcd_config == config and s.etcd is None


def test_a_negative_metrics_port_in_the_environment_turns_the_endpoint_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``MESH_METRICS_PORT=-1`` means off, as ``--metrics-port -1`` does."""
    monkeypatch.setenv("MESH_METRICS_PORT", "-1")
    assert MeshSettings().metrics_port is None
    monkeypatch.setenv("MESH_METRICS_PORT", "0")
    assert MeshSettings().metrics_port == 0


def test_an_endpoint_with_credentials_in_it_is_refused_without_echoing_them(tmp_path: Path) -> None:
    for text in (f"https://mesh:{SECRET}@etcd-0:2379", f"mesh:{SECRET}@etcd-0:2379"):
        with pytest.raises(EtcdConfigError) as refused:
            EtcdConnection.from_file(write(tmp_path, {"endpoints": text}))
        assert SECRET not in str(refused.value)
        assert "credentials" in str(refused.value) and "'userid' and 'password'" in str(refused.value)
        with pytest.raises(EtcdConfigError) as flag:
            EtcdConnection.from_endpoints(text)
        assert SECRET not in str(flag.value)


def test_a_registry_flag_wins_over_the_other_registry_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--etcd`` and ``--etcd-config`` are two forms of one setting: a flag of either form wins
    over a ``MESH_*`` variable of the other, as every flag wins over the variables."""
    from mesh_tools.parser import build_parser
    from mesh_tools.servers import serve_settings

    config = write(tmp_path, {"endpoints": "127.0.0.1:2379"})
    monkeypatch.setenv("MESH_ETCD_CONFIG", str(config))
    s = serve_settings(build_parser().parse_args(["serve", "--etcd", "127.0.0.1:4001"]))
    assert (s.etcd, s.etcd_config) == ("127.0.0.1:4001", None)
    monkeypatch.delenv("MESH_ETCD_CONFIG")
    monkeypatch.setenv("MESH_ETCD", "127.0.0.1:4001")
    s = serve_settings(build_parser().parse_args(["serve", "--etcd-config", str(config)]))
    assert (s.etcd, s.etcd_config) == (None, config)


def test_a_pod_in_a_fleet_bound_to_every_address_must_say_where_it_is_reached() -> None:
    """``MESH_HOST=0.0.0.0`` (the image's) is no address another pod can dial: one published as
    the pod's endpoint would send every forwarded call back to the caller itself."""
    for host in ("0.0.0.0", "::", "[::]"):
        with pytest.raises(ValueError, match=r"MESH_ADVERTISE_HOST.*status\.podIP"):
            MeshSettings(host=host, etcd="127.0.0.1:2379")
    reached = MeshSettings(host="0.0.0.0", etcd="127.0.0.1:2379", advertise_host="127.0.0.2")
    assert reached.advertise_host == "127.0.0.2"
    assert MeshSettings(host="0.0.0.0").etcd is None  # a lone pod (in-memory registry) advertises nothing
