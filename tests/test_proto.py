"""Our proto/csi.proto against the CSI v1.12.0 release, descriptor by descriptor, and the stubs.

The release's csi.proto comes from its Go module (`go mod download`), is compiled here with the same
protoc as ours, and both descriptor sets are compared in both directions: every message (nested
ones too), field (name, number, type, label, type name, oneof, proto3 optional, JSON name,
options), oneof, enum and value (with options), service and method (types, streaming, options),
and extension.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import grpc_tools
import pytest
from google.protobuf import descriptor_pb2 as dpb
from google.protobuf.message import Message

ROOT = Path(__file__).resolve().parent.parent
OURS = ROOT / "proto" / "csi.proto"
MODULE = "github.com/container-storage-interface/spec"
VERSION = "v1.12.0"


def _gen_proto() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _go(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(
        ["go", *args], check=True, capture_output=True, text=True, cwd=cwd
    ).stdout.strip()


@pytest.fixture(scope="module")
def upstream_proto(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("go") is None:
        if os.environ.get("CI"):
            pytest.fail("go is required in CI to fetch the CSI v1.12.0 proto")
        pytest.skip("go is not installed: cannot fetch the CSI v1.12.0 proto to compare with")
    cached = Path(_go("env", "GOMODCACHE")) / f"{MODULE}@{VERSION}" / "csi.proto"
    if not cached.exists():
        work = tmp_path_factory.mktemp("gomod")
        _go("mod", "init", "example.invalid/fetch", cwd=work)
        _go("mod", "download", f"{MODULE}@{VERSION}", cwd=work)
    assert cached.exists(), f"{cached} missing after go mod download"
    return cached


def _compile(proto: Path, out: Path) -> dpb.FileDescriptorProto:
    src = out / "src"
    src.mkdir(parents=True)
    shutil.copyfile(proto, src / "csi.proto")
    include = Path(grpc_tools.__file__).parent / "_proto"
    target = out / "set.pb"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{src}",
            f"-I{include}",
            f"--descriptor_set_out={target}",
            "csi.proto",
        ],
        check=True,
    )
    files = dpb.FileDescriptorSet.FromString(target.read_bytes()).file
    assert len(files) == 1
    return files[0]


def _options(message: Message) -> str:
    return message.SerializeToString(deterministic=True).hex()


def _fields(msg: dpb.DescriptorProto, path: str) -> Iterator[tuple[str, object]]:
    yield f"{path} options", _options(msg.options)
    yield f"{path} oneofs", [o.name for o in msg.oneof_decl]
    for f in msg.field:
        yield (
            f"{path}.{f.name}",
            {
                "number": f.number,
                "type": f.type,
                "label": f.label,
                "type_name": f.type_name,
                "oneof": f.oneof_index if f.HasField("oneof_index") else None,
                "proto3_optional": f.proto3_optional,
                "json_name": f.json_name,
                "options": _options(f.options),
            },
        )
    for e in msg.enum_type:
        yield from _enum(e, f"{path}.{e.name}")
    for nested in msg.nested_type:
        yield from _fields(nested, f"{path}.{nested.name}")


def _enum(e: dpb.EnumDescriptorProto, path: str) -> Iterator[tuple[str, object]]:
    yield f"{path} options", _options(e.options)
    for v in e.value:
        yield f"{path}.{v.name}", {"number": v.number, "options": _options(v.options)}


def flatten(fd: dpb.FileDescriptorProto) -> dict[str, object]:
    """Every wire-relevant element of the file, keyed by a readable path."""
    out: dict[str, object] = {
        "package": fd.package,
        "syntax": fd.syntax,
        "dependencies": sorted(fd.dependency),
        "go_package": fd.options.go_package,
    }
    for msg in fd.message_type:
        out.update(_fields(msg, f"message {msg.name}"))
    for e in fd.enum_type:
        out.update(_enum(e, f"enum {e.name}"))
    for svc in fd.service:
        out[f"service {svc.name} options"] = _options(svc.options)
        for m in svc.method:
            out[f"service {svc.name}.{m.name}"] = {
                "input": m.input_type,
                "output": m.output_type,
                "client_streaming": m.client_streaming,
                "server_streaming": m.server_streaming,
                "options": _options(m.options),
            }
    for ext in fd.extension:
        out[f"extension {ext.name}"] = {
            "number": ext.number,
            "extendee": ext.extendee,
            "type": ext.type,
            "label": ext.label,
        }
    return out


def differences(ours: dict[str, object], theirs: dict[str, object]) -> list[str]:
    """Readable differences between two flattened files."""
    lines = [f"missing in ours: {k}" for k in sorted(theirs.keys() - ours.keys())]
    lines += [f"not in CSI {VERSION}: {k}" for k in sorted(ours.keys() - theirs.keys())]
    for key in sorted(ours.keys() & theirs.keys()):
        if ours[key] != theirs[key]:
            lines.append(
                f"{key}: ours {json.dumps(ours[key], default=str)} "
                f"!= {VERSION} {json.dumps(theirs[key], default=str)}"
            )
    return lines


def test_wire_compatible_with_csi_1_12(upstream_proto: Path, tmp_path: Path) -> None:
    ours = flatten(_compile(OURS, tmp_path / "ours"))
    theirs = flatten(_compile(upstream_proto, tmp_path / "theirs"))
    assert differences(ours, theirs) == []
    # Sanity of the comparison itself: it covers every message and service of the release.
    assert sum(k.startswith("message ") and " " not in k[8:] for k in theirs) > 150
    assert sum(k.startswith("service ") and k.endswith("options") for k in theirs) == 5


def test_the_comparison_notices_a_changed_field_number(
    upstream_proto: Path, tmp_path: Path
) -> None:
    changed = tmp_path / "changed.proto"
    text = OURS.read_text()
    assert "string volume_id = 2;" in text
    changed.write_text(text.replace("string volume_id = 2;", "string volume_id = 12;", 1))
    ours = flatten(_compile(changed, tmp_path / "ours"))
    theirs = flatten(_compile(upstream_proto, tmp_path / "theirs"))
    assert differences(ours, theirs) == [
        'message Volume.volume_id: ours {"number": 12, "type": 9, "label": 1, "type_name": "", '
        '"oneof": null, "proto3_optional": false, "json_name": "volumeId", "options": ""} '
        f'!= {VERSION} {{"number": 2, "type": 9, "label": 1, "type_name": "", "oneof": null, '
        '"proto3_optional": false, "json_name": "volumeId", "options": ""}'
    ]


def test_stubs_import_with_every_servicer() -> None:
    from csi_oxide._csi import csi_pb2, csi_pb2_grpc

    for service in ("Identity", "Controller", "GroupController", "SnapshotMetadata", "Node"):
        assert hasattr(csi_pb2_grpc, f"{service}Servicer")
        assert hasattr(csi_pb2_grpc, f"{service}Stub")
    secrets = csi_pb2.CreateVolumeRequest.DESCRIPTOR.fields_by_name["secrets"]
    assert secrets.GetOptions().Extensions[csi_pb2.csi_secret] is True


def test_committed_stubs_match_the_proto() -> None:
    gen = _gen_proto()
    assert gen.drift(gen.PROTO, gen.OUTPUT) == []


def test_drift_check_fails_on_a_changed_proto(tmp_path: Path) -> None:
    gen = _gen_proto()
    changed = tmp_path / "csi.proto"
    changed.write_text(OURS.read_text().replace("int64 capacity_bytes = 1;", "int64 size = 1;"))
    assert "csi_pb2.py" in gen.drift(changed, gen.OUTPUT)
