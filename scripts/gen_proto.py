"""Generate the gRPC stubs in ``csi_oxide/_csi/`` from ``proto/csi.proto``; ``--check`` for drift.

The proto is copied into a temporary tree at ``csi_oxide/_csi/csi.proto`` so that protoc writes
``from csi_oxide._csi import csi_pb2`` into the gRPC module without any patching. Outputs: the
message module, the gRPC module and mypy stubs for both (mypy-protobuf's plugins).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc_tools

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto" / "csi.proto"
OUTPUT = ROOT / "csi_oxide" / "_csi"
PACKAGE_DIR = Path("csi_oxide") / "_csi"
GENERATED = ("csi_pb2.py", "csi_pb2.pyi", "csi_pb2_grpc.py", "csi_pb2_grpc.pyi")
INIT = '"""Stubs generated from proto/csi.proto by scripts/gen_proto.py; do not edit."""\n'


def generate(proto: Path, out_dir: Path) -> None:
    """Write the generated modules (and ``__init__.py``) for ``proto`` into ``out_dir``."""
    bin_dir = Path(sys.executable).parent
    include = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        gen = Path(tmp) / "gen"
        (src / PACKAGE_DIR).mkdir(parents=True)
        gen.mkdir()
        shutil.copyfile(proto, src / PACKAGE_DIR / "csi.proto")
        argv = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{src}",
            f"-I{include}",
            f"--python_out={gen}",
            f"--grpc_python_out={gen}",
            f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
            f"--mypy_out={gen}",
            f"--mypy_grpc_out={gen}",
            str(PACKAGE_DIR / "csi.proto"),
        ]
        subprocess.run(argv, check=True, cwd=src)
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in GENERATED:
            shutil.copyfile(gen / PACKAGE_DIR / name, out_dir / name)
        (out_dir / "__init__.py").write_text(INIT)


def drift(proto: Path, committed: Path) -> list[str]:
    """Files under ``committed`` that differ from a fresh generation from ``proto``."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(proto, fresh)
        names = (*GENERATED, "__init__.py")
        return [
            n
            for n in names
            if not (committed / n).exists() or not filecmp.cmp(fresh / n, committed / n, False)
        ]


def main(argv: list[str] | None = None) -> int:
    """Regenerate, or with ``--check`` report drift and exit 1."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the stubs are out of date")
    args = parser.parse_args(argv)
    if not args.check:
        generate(PROTO, OUTPUT)
        return 0
    stale = drift(PROTO, OUTPUT)
    if stale:
        print(
            f"generated stubs differ from {PROTO.relative_to(ROOT)}: {', '.join(stale)}; "
            "run `make proto` and commit the result",
            file=sys.stderr,
        )
        return 1
    print("generated stubs match proto/csi.proto")
    return 0


if __name__ == "__main__":
    sys.exit(main())
