"""Our proto/csi.proto against the CSI v1.12.0 release, descriptor by descriptor, and the stubs.

The release's csi.proto comes from its Go module (`go mod download`) and is compiled here with the
same protoc as ours. Both descriptor sets are flattened into one record per element (message,
field, oneof, enum, enum value, service, method, extension; nested types included) and compared in
both directions, including which custom options (csi_secret, alpha_*) each element carries. The
descriptor embedded in the committed stubs is compared the same way.
"""

from __future__ import annotations

import importlib.util
import re
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

from tests import skips

ROOT = Path(__file__).resolve().parent.parent
OURS = ROOT / "proto" / "csi.proto"
MODULE = "github.com/container-storage-interface/spec"
VERSION = "v1.12.0"
SERVICES = ("Identity", "Controller", "GroupController", "SnapshotMetadata", "Node")
CSI_SECRET = 1059
ALPHA = 1060
# Built-in options that appear in the release, named for readable differences.
BUILT_IN = {"file": {11: "go_package"}, "message": {7: "map_entry"}}

Record = dict[str, object]


# --- fetching and compiling ------------------------------------------------------------------


def _gen_proto() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _go(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(["go", *args], capture_output=True, text=True, cwd=cwd, check=False)
    if done.returncode != 0:
        skips.unavailable(f"`go {' '.join(args)}` failed: {done.stderr.strip()}")
    return done.stdout.strip()


@pytest.fixture(scope="module")
def upstream_proto(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The csi.proto of the CSI v1.12.0 release, from the Go module cache."""
    if shutil.which("go") is None:
        skips.unavailable("go is not installed: cannot fetch the CSI v1.12.0 proto to compare with")
    cached = Path(_go("env", "GOMODCACHE")) / f"{MODULE}@{VERSION}" / "csi.proto"
    if not cached.exists():
        work = tmp_path_factory.mktemp("gomod")
        _go("mod", "init", "example.invalid/fetch", cwd=work)
        _go("mod", "download", f"{MODULE}@{VERSION}", cwd=work)
    assert cached.exists(), f"{cached} missing after go mod download"
    return cached


def _compile(proto: Path, out: Path) -> dpb.FileDescriptorProto:
    """``proto`` compiled by grpc_tools' protoc, as the file descriptor of csi.proto itself."""
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
            "--include_imports",
            f"--descriptor_set_out={target}",
            "csi.proto",
        ],
        check=True,
    )
    files = dpb.FileDescriptorSet.FromString(target.read_bytes()).file
    (csi,) = [f for f in files if f.name == "csi.proto"]
    return csi


@pytest.fixture(scope="module")
def theirs(upstream_proto: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Record]:
    return flatten(_compile(upstream_proto, tmp_path_factory.mktemp("theirs")))


# --- flattening descriptors into comparable records ------------------------------------------


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i


def _wire_fields(data: bytes) -> Iterator[tuple[int, str]]:
    """(field number, value) of every field in serialized ``data``, known or extension alike."""
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i)
            yield number, str(value)
        elif wire == 2:
            size, i = _varint(data, i)
            yield number, data[i : i + size].decode(errors="backslashreplace")
            i += size
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            yield number, data[i : i + width].hex()
            i += width
        else:
            raise ValueError(f"unexpected wire type {wire} in options")


def _options(options: Message, kind: str) -> list[str]:
    """The options set on an element, by name: ``csi_secret``, ``alpha_<kind>`` or ``#number``.

    Read from the wire bytes so that extensions count whether or not the runtime knows them.
    """
    names = {CSI_SECRET: "csi_secret", ALPHA: f"alpha_{kind}", **BUILT_IN.get(kind, {})}
    data = options.SerializeToString(deterministic=True)
    return sorted(f"{names.get(n, f'#{n}')}={v}" for n, v in _wire_fields(data))


def _json_name(name: str) -> str:
    """protoc's default JSON name (the runtime's copy of a descriptor omits it)."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _field(f: dpb.FieldDescriptorProto, msg: dpb.DescriptorProto) -> Record:
    oneof = msg.oneof_decl[f.oneof_index].name if f.HasField("oneof_index") else None
    return {
        "number": f.number,
        "type": dpb.FieldDescriptorProto.Type.Name(f.type),
        "label": dpb.FieldDescriptorProto.Label.Name(f.label),
        "type_name": f.type_name.lstrip("."),
        "oneof_index": f.oneof_index if f.HasField("oneof_index") else None,
        "oneof": oneof,
        "proto3_optional": f.proto3_optional,
        "json_name": f.json_name if f.HasField("json_name") else _json_name(f.name),
        "default": f.default_value,
        "options": _options(f.options, "field"),
    }


def _message(msg: dpb.DescriptorProto, path: str) -> Iterator[tuple[str, Record]]:
    yield (
        f"message {path}",
        {
            "options": _options(msg.options, "message"),
            "fields": [f.name for f in msg.field],
            "nested": sorted(n.name for n in msg.nested_type),
            "enums": sorted(e.name for e in msg.enum_type),
            "extensions": len(msg.extension),
            "reserved": [(r.start, r.end) for r in msg.reserved_range] + list(msg.reserved_name),
        },
    )
    for index, oneof in enumerate(msg.oneof_decl):
        yield f"oneof {path}.{oneof.name}", {"index": index, "options": _options(oneof.options, "")}
    for f in msg.field:
        yield f"field {path}.{f.name}", _field(f, msg)
    for e in msg.enum_type:
        yield from _enum(e, f"{path}.{e.name}")
    for nested in msg.nested_type:
        yield from _message(nested, f"{path}.{nested.name}")


def _enum(e: dpb.EnumDescriptorProto, path: str) -> Iterator[tuple[str, Record]]:
    yield f"enum {path}", {"options": _options(e.options, "enum"), "values": len(e.value)}
    for v in e.value:
        yield (
            f"value {path}.{v.name}",
            {"number": v.number, "options": _options(v.options, "enum_value")},
        )


def flatten(fd: dpb.FileDescriptorProto) -> dict[str, Record]:
    """Every wire-relevant element of the file as a record, keyed by kind and full name."""
    out: dict[str, Record] = {
        "file": {
            "package": fd.package,
            "syntax": fd.syntax,
            "dependencies": sorted(fd.dependency),
            "options": _options(fd.options, "file"),
        }
    }
    prefix = f"{fd.package}."
    for msg in fd.message_type:
        out.update(_message(msg, prefix + msg.name))
    for e in fd.enum_type:
        out.update(_enum(e, prefix + e.name))
    for svc in fd.service:
        out[f"service {prefix}{svc.name}"] = {
            "options": _options(svc.options, "service"),
            "methods": [m.name for m in svc.method],
        }
        for m in svc.method:
            out[f"method {prefix}{svc.name}.{m.name}"] = {
                "input": m.input_type.lstrip("."),
                "output": m.output_type.lstrip("."),
                "client_streaming": m.client_streaming,
                "server_streaming": m.server_streaming,
                "options": _options(m.options, "method"),
            }
    for ext in fd.extension:
        out[f"extension {prefix}{ext.name}"] = {
            "number": ext.number,
            "extendee": ext.extendee.lstrip("."),
            "type": dpb.FieldDescriptorProto.Type.Name(ext.type),
            "label": dpb.FieldDescriptorProto.Label.Name(ext.label),
        }
    return out


def differences(ours: dict[str, Record], theirs: dict[str, Record]) -> list[str]:
    """Readable differences between two flattened files: one line per element and attribute."""
    lines = [f"missing in ours: {k}" for k in sorted(theirs.keys() - ours.keys())]
    lines += [f"not in CSI {VERSION}: {k}" for k in sorted(ours.keys() - theirs.keys())]
    for key in sorted(ours.keys() & theirs.keys()):
        mine, release = ours[key], theirs[key]
        lines += [
            f"{key}: {attr} is {mine.get(attr)!r} in ours, {release.get(attr)!r} in {VERSION}"
            for attr in sorted(mine.keys() | release.keys())
            if mine.get(attr) != release.get(attr)
        ]
    return lines


def _ours_compiled(tmp_path: Path, text: str | None = None) -> dict[str, Record]:
    source = OURS
    if text is not None:
        source = tmp_path / "changed.proto"
        source.write_text(text)
    return flatten(_compile(source, tmp_path / "ours"))


# --- wire compatibility ------------------------------------------------------------------------


def test_our_proto_is_wire_compatible_with_csi_1_12(
    theirs: dict[str, Record], tmp_path: Path
) -> None:
    problems = differences(_ours_compiled(tmp_path), theirs)
    assert not problems, "\n".join(problems)


def test_the_committed_stubs_are_wire_compatible_with_csi_1_12(
    theirs: dict[str, Record],
) -> None:
    from csi_oxide._csi import csi_pb2

    embedded = dpb.FileDescriptorProto()
    csi_pb2.DESCRIPTOR.CopyToProto(embedded)
    problems = differences(flatten(embedded), theirs)
    assert not problems, "\n".join(problems)


def _count(text: str, pattern: str) -> int:
    code = "\n".join(line.split("//", 1)[0] for line in text.splitlines())
    return len(re.findall(pattern, code, flags=re.MULTILINE))


def test_the_flattening_covers_every_element_of_the_release(
    upstream_proto: Path, theirs: dict[str, Record]
) -> None:
    # Counted independently on the release's text, so a walker that skipped nested types fails.
    text = upstream_proto.read_text()
    kinds = [key.split(" ", 1)[0] for key in theirs]
    # protoc adds one nested *Entry message per map field.
    declared = _count(text, r"^\s*message\s+\w+\s*\{") + _count(text, r"\bmap\s*<")
    assert kinds.count("message") == declared
    assert kinds.count("enum") == _count(text, r"^\s*enum\s+\w+\s*\{")
    assert kinds.count("method") == _count(text, r"^\s*rpc\s+\w+\s*\(")
    assert kinds.count("service") == len(SERVICES)
    assert kinds.count("extension") == _count(text, r"=\s*10(?:59|60)\s*;")
    secrets = [k for k, r in theirs.items() if "csi_secret=1" in str(r.get("options"))]
    assert len(secrets) == text.count("(csi_secret) = true")


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "string volume_id = 2;",
            "string volume_id = 12;",
            "field csi.v1.Volume.volume_id: number is 12 in ours, 2 in v1.12.0",
        ),
        (
            "map<string, string> secrets = 2 [(csi_secret) = true];",
            "map<string, string> secrets = 2;",
            "field csi.v1.DeleteVolumeRequest.secrets: options is [] in ours, ['csi_secret=1']",
        ),
        (
            "returns (stream GetMetadataDeltaResponse)",
            "returns (GetMetadataDeltaResponse)",
            "method csi.v1.SnapshotMetadata.GetMetadataDelta: server_streaming is False",
        ),
        (
            "MULTI_NODE_MULTI_WRITER = 5;",
            "MULTI_NODE_MULTI_WRITER = 8;",
            "value csi.v1.VolumeCapability.AccessMode.Mode.MULTI_NODE_MULTI_WRITER: number is 8",
        ),
        (
            "  int64 byte_offset = 1;\n",
            "  int64 byte_offset = 1;\n  int64 extra = 3;\n",
            "not in CSI v1.12.0: field csi.v1.BlockMetadata.extra",
        ),
        (
            "  option (alpha_service) = true;\n",
            "",
            "service csi.v1.SnapshotMetadata: options is [] in ours, ['alpha_service=1']",
        ),
    ],
    ids=["field-number", "csi-secret", "streaming", "enum-value", "extra-field", "alpha-service"],
)
def test_the_comparison_reports_a_changed_element(
    theirs: dict[str, Record], tmp_path: Path, old: str, new: str, expected: str
) -> None:
    text = OURS.read_text()
    assert old in text
    problems = differences(_ours_compiled(tmp_path, text.replace(old, new, 1)), theirs)
    assert any(line.startswith(expected) for line in problems), "\n".join(problems)


# --- the generated stubs -------------------------------------------------------------------


def test_stubs_import_with_every_servicer() -> None:
    from csi_oxide._csi import csi_pb2, csi_pb2_grpc

    for service in SERVICES:
        assert isinstance(getattr(csi_pb2_grpc, f"{service}Servicer"), type)
        assert isinstance(getattr(csi_pb2_grpc, f"{service}Stub"), type)
        assert callable(getattr(csi_pb2_grpc, f"add_{service}Servicer_to_server"))
    secrets = csi_pb2.CreateVolumeRequest.DESCRIPTOR.fields_by_name["secrets"]
    assert secrets.GetOptions().Extensions[csi_pb2.csi_secret] is True
    assert csi_pb2.DESCRIPTOR.name == "csi_oxide/_csi/csi.proto"


def test_committed_stubs_match_the_proto() -> None:
    gen = _gen_proto()
    assert gen.drift(gen.PROTO, gen.OUTPUT) == []


@pytest.fixture
def stub_copy(tmp_path: Path) -> Path:
    """A copy of the committed stubs that a test may damage."""
    copy = tmp_path / "_csi"
    shutil.copytree(ROOT / "csi_oxide" / "_csi", copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_drift_check_fails_on_an_edited_stub(
    stub_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gen = _gen_proto()
    assert gen.check(gen.PROTO, stub_copy) == 0
    stub = stub_copy / "csi_pb2_grpc.py"
    stub.write_text(stub.read_text().replace("class NodeServicer", "class NodeServicr"))
    (stub_copy / "csi_pb2.pyi").unlink()
    assert gen.check(gen.PROTO, stub_copy) == 1
    report = capsys.readouterr().err
    assert "csi_pb2_grpc.py: 2 changed line(s)" in report
    assert "csi_pb2.pyi: missing" in report
    assert "csi_pb2.py:" not in report


def test_drift_check_fails_on_a_changed_proto(stub_copy: Path, tmp_path: Path) -> None:
    gen = _gen_proto()
    changed = tmp_path / "csi.proto"
    changed.write_text(OURS.read_text().replace("int64 capacity_bytes = 1;", "int64 size = 1;"))
    stale = gen.drift(changed, stub_copy)
    files = {line.split(":", 1)[0] for line in stale}
    assert files >= {"csi_pb2.py", "csi_pb2.pyi"}
    assert "__init__.py" not in files
    assert gen.main(["--check", "--proto", str(changed), "--out", str(stub_copy)]) == 1
    assert gen.main(["--check", "--out", str(stub_copy)]) == 0
