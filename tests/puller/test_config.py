"""Storage-config reading, key choice, overrides, credential hygiene, and pvc path safety."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mesh_common.errors import InvalidInput, StorageConfigError
from puller import default_fetchers
from puller.base import FetcherTable
from puller.config import StorageConfig, check_model_key, locate, storage_uri
from puller.local import LocalFetcher
from puller.pvc import PvcFetcher

S3 = {"type": "s3", "access_key_id": "AKIDEXAMPLE", "secret_access_key": "s3cr3t-value", "bucket": "models"}


def secret_dir(root: Path, entries: dict[str, object]) -> Path:
    """A directory laid out as a mounted Secret: one file per key plus kubelet's dot-entries."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "..data").mkdir(exist_ok=True)
    for key, value in entries.items():
        (root / key).write_text(value if isinstance(value, str) else json.dumps(value))
    return root


def test_directory_and_file_forms_give_the_same_entries(tmp_path: Path) -> None:
    as_dir = StorageConfig(secret_dir(tmp_path / "secret", {"minio": S3}))
    as_file = tmp_path / "config.json"
    as_file.write_text(json.dumps({"minio": S3}))
    assert as_dir.keys() == ["minio"]
    assert as_dir.entry("minio") == StorageConfig(as_file).entry("minio") == S3
    assert as_dir.entry("absent") is None


def test_changes_are_picked_up_without_a_restart(tmp_path: Path) -> None:
    directory = secret_dir(tmp_path / "secret", {"minio": S3})
    config = StorageConfig(directory)
    assert config.entry("minio") == S3
    rotated = {**S3, "secret_access_key": "rotated-secret"}
    (directory / "minio").write_text(json.dumps(rotated))
    os.utime(directory / "minio", ns=(1, 1))  # a different mtime even on coarse clocks
    (directory / "gcs").write_text(json.dumps({"type": "gcs"}))
    assert config.entry("minio") == rotated
    assert config.keys() == ["gcs", "minio"]


def test_a_broken_entry_fails_only_its_users_and_shows_no_content(tmp_path: Path) -> None:
    config = StorageConfig(secret_dir(tmp_path / "secret", {"good": S3, "bad": '{"secret_access_key": "abc'}))
    assert config.entry("good") == S3
    with pytest.raises(StorageConfigError, match="'bad' is not JSON") as caught:
        config.entry("bad")
    assert "abc" not in str(caught.value)


def test_named_key_params_override_and_the_uri_stays_free_of_credentials(tmp_path: Path) -> None:
    config = StorageConfig(secret_dir(tmp_path / "s", {"minio": S3}))
    loc = locate(
        "s3://other/path/model.onnx", {"storage_key": "minio", "storage_params": {"region": "eu"}}, config
    )
    assert (loc.bucket, loc.path, loc.type) == ("other", "path/model.onnx", "s3")
    assert loc.params["region"] == "eu" and loc.params["access_key_id"] == "AKIDEXAMPLE"
    assert "AKIDEXAMPLE" not in repr(loc)
    assert loc.redact("signature for AKIDEXAMPLE with s3cr3t-value") == "signature for *** with ***"


def test_default_keys_are_chosen_by_type(tmp_path: Path) -> None:
    config = StorageConfig(
        secret_dir(tmp_path / "s", {"default": {"type": "gcs", "client_email": "a@b"}, "default_s3": S3})
    )
    assert locate("s3://b/k", {}, config).params["access_key_id"] == "AKIDEXAMPLE"
    assert locate("gs://b/k", {}, config).params["client_email"] == "a@b"
    assert dict(locate("https://host/m.onnx", {}, config).params) == {"type": "http"}


def test_missing_or_mismatched_storage_key_is_a_clear_error(tmp_path: Path) -> None:
    config = StorageConfig(secret_dir(tmp_path / "s", {"minio": S3}))
    with pytest.raises(StorageConfigError, match=r"'nope' is not in the storage config \(keys: minio\)"):
        locate("s3://b/k", {"storage_key": "nope"}, config)
    with pytest.raises(StorageConfigError, match="type 's3', but 'gs://b/k' needs 'gcs'"):
        locate("gs://b/k", {"storage_key": "minio"}, config)


def test_modelmesh_style_paths_become_uris(tmp_path: Path) -> None:
    config = StorageConfig(
        secret_dir(
            tmp_path / "s",
            {
                "minio": {**S3, "bucket": "models"},
                "web": {"type": "http", "url": "https://models.example/base/"},
                "claim": {"type": "pvc", "name": "model-pvc"},
            },
        )
    )
    assert storage_uri("sk/model.joblib", {"storage_key": "minio"}, config) == "s3://models/sk/model.joblib"
    key = {"storage_key": "minio", "storage_params": {"bucket": "other"}}
    assert storage_uri("sk/m", key, config) == "s3://other/sk/m"
    assert storage_uri("m.onnx", {"storage_key": "web"}, config) == "https://models.example/base/m.onnx"
    assert storage_uri("/a/b", {"storage_key": "claim"}, config) == "pvc://model-pvc/a/b"
    table = FetcherTable({"": LocalFetcher()}, config=config)
    assert table.uri("/local/model.joblib", storage={}) == "/local/model.joblib"


@pytest.mark.parametrize("field", ["secret_access_key", "access_key_id", "private_key", "headers"])
def test_credentials_in_a_model_key_are_refused(field: str) -> None:
    with pytest.raises(InvalidInput, match=f"carries credentials \\({field}\\)"):
        check_model_key({"storage_key": "minio", "storage_params": {field: "x"}})
    with pytest.raises(InvalidInput, match="credentials"):
        default_fetchers().check("/m.joblib", storage={field: "x"})
    check_model_key({"storage_key": "minio", "storage_params": {"bucket": "b"}})


def test_pvc_paths_resolve_under_the_root_and_never_escape(tmp_path: Path) -> None:
    root = tmp_path / "mounts"
    (root / "claim" / "models").mkdir(parents=True)
    (root / "claim" / "models" / "m.joblib").write_bytes(b"x")
    outside = tmp_path / "outside.joblib"
    outside.write_bytes(b"secret")
    (root / "claim" / "link.joblib").symlink_to(outside)
    (root / "claim" / "inner.joblib").symlink_to(root / "claim" / "models" / "m.joblib")
    fetcher = PvcFetcher(root)
    assert fetcher.resolve("pvc://claim/models/m.joblib") == root / "claim" / "models" / "m.joblib"
    assert fetcher.resolve("pvc://claim/inner.joblib") == root / "claim" / "models" / "m.joblib"
    with pytest.raises(InvalidInput, match=r"no '\.\.'"):
        fetcher.resolve("pvc://claim/../other/m.joblib")
    with pytest.raises(InvalidInput, match="outside its claim"):
        fetcher.resolve("pvc://claim/link.joblib")
    with pytest.raises(InvalidInput, match="pvc://<claim>/<path>"):
        fetcher.resolve("pvc:///models/m.joblib")
