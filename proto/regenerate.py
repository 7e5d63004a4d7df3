"""Regenerate the Python code for the ``.proto`` files in ``proto/mesh_proto``.

Usage:
    python proto/regenerate.py          # rewrite the committed files
    python proto/regenerate.py --check  # exit 1 if the committed files are stale

The generated modules register their types in ``mesh_proto.pool.POOL`` rather
than protobuf's default pool (see that module for why).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
PACKAGE = "mesh_proto"
_DEFAULT_POOL = "_descriptor_pool.Default()"
_POOL_IMPORT = "from mesh_proto.pool import POOL as _MESH_POOL\n"


def generate(out_dir: Path) -> list[Path]:
    """Compile every proto into ``out_dir/mesh_proto`` and return the files written."""
    sources = sorted((PROTO_ROOT / PACKAGE).glob("*.proto"))
    args = [
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(f"{PACKAGE}/{src.name}" for src in sources),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written = sorted((out_dir / PACKAGE).glob("*_pb2*.py*"))
    for path in written:
        if path.name.endswith("_pb2.py"):
            _use_mesh_pool(path)
    return written


def _use_mesh_pool(path: Path) -> None:
    text = path.read_text()
    if _DEFAULT_POOL not in text:
        raise SystemExit(f"{path.name}: generated code no longer uses {_DEFAULT_POOL}")
    text = text.replace(_DEFAULT_POOL, "_MESH_POOL")
    marker = "# @@protoc_insertion_point(imports)\n"
    text = text.replace(marker, _POOL_IMPORT + marker, 1)
    path.write_text(text)


def stale_files() -> list[str]:
    """Names of committed generated files that differ from a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        committed = {p.name for p in (PROTO_ROOT / PACKAGE).glob("*_pb2*.py*")}
        stale = [p.name for p in fresh if p.name not in committed]
        stale += [
            p.name
            for p in fresh
            if p.name in committed and not filecmp.cmp(p, PROTO_ROOT / PACKAGE / p.name, shallow=False)
        ]
        stale += sorted(committed - {p.name for p in fresh})
        return stale


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args()
    if args.check:
        stale = stale_files()
        for name in stale:
            print(f"stale: proto/{PACKAGE}/{name}")
        return 1 if stale else 0
    with tempfile.TemporaryDirectory() as tmp:
        for path in generate(Path(tmp)):
            shutil.copyfile(path, PROTO_ROOT / PACKAGE / path.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
