"""Finding the model file in an artifact path: the file, its directory, a Triton-style repository."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.artifacts import artifact_bytes, find_artifact
from mesh_common.errors import ArtifactNotFound

SUFFIXES = (".onnx",)


def put(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x" * 10)


def test_a_file_a_directory_and_the_file_named_model_among_several(tmp_path: Path) -> None:
    put(tmp_path, "a/only.onnx", "b/model.onnx", "b/extra.onnx", "b/notes.txt")
    assert find_artifact(tmp_path / "a" / "only.onnx", SUFFIXES) == tmp_path / "a" / "only.onnx"
    assert find_artifact(tmp_path / "a", SUFFIXES) == tmp_path / "a" / "only.onnx"
    assert find_artifact(tmp_path / "b", SUFFIXES) == tmp_path / "b" / "model.onnx"


def test_the_highest_numeric_version_with_a_model_wins_and_a_lone_folder_is_entered(tmp_path: Path) -> None:
    put(tmp_path, "repo/2/model.onnx", "repo/10/model.onnx", "repo/11/readme.txt", "repo/.git/x.onnx")
    put(tmp_path, "wrapped/mlp/model.onnx")
    assert find_artifact(tmp_path / "repo", SUFFIXES) == tmp_path / "repo" / "10" / "model.onnx"
    assert find_artifact(tmp_path / "wrapped", SUFFIXES) == tmp_path / "wrapped" / "mlp" / "model.onnx"


def test_nothing_several_or_a_missing_path_are_refused_with_what_was_found(tmp_path: Path) -> None:
    put(tmp_path, "two/a.onnx", "two/b.onnx", "none/model.txt", "deep/a/b/c/model.onnx")
    with pytest.raises(ArtifactNotFound, match=r"several model files under .*two.*: a\.onnx, b\.onnx"):
        find_artifact(tmp_path / "two", SUFFIXES)
    for empty in ("none", "deep"):
        with pytest.raises(ArtifactNotFound, match=r"no file ending in \.onnx under"):
            find_artifact(tmp_path / empty, SUFFIXES)
    with pytest.raises(ArtifactNotFound, match="does not exist"):
        find_artifact(tmp_path / "absent", SUFFIXES)


def test_artifact_bytes_add_up_a_tree(tmp_path: Path) -> None:
    put(tmp_path, "t/model.onnx", "t/1/weights.bin")
    assert (artifact_bytes(tmp_path / "t"), artifact_bytes(tmp_path / "t" / "model.onnx")) == (20, 10)
