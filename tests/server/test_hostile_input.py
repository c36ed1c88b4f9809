"""Hostile input: generated requests for every RPC, over real gRPC, against the simulator.

Requests are built from each method's message descriptor: every field is left out or filled with
something nasty (empty, huge, negative, unknown enum values, odd names and IDs, relative or ``..``
paths, paths through symlinks, NUL bytes, unknown parameters). The driver must answer each with one
of the codes the CSI spec uses for bad requests or states: never UNKNOWN or INTERNAL, never a
crash. Node requests use paths inside a temporary directory only (and a symlink to /proc); no real
device exists, so nothing is ever formatted.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from csi_oxide._csi import csi_pb2 as csi
from csi_oxide._csi import csi_pb2_grpc as csi_grpc
from csi_oxide.daemon.health import Health
from csi_oxide.daemon.inflight import InFlight
from csi_oxide.server.app import CsiServer, Services
from csi_oxide.server.controller import ControllerService
from csi_oxide.server.identity import IdentityService
from csi_oxide.server.node import NodeService
from csi_oxide.wiring import build_controller_ops, build_node_ops
from csi_oxide_lab.sim import SimConfig, Simulator
from csi_oxide_lab.testing import sim_client

EXAMPLES_PER_RPC = 540  # x 20 RPCs with fields to vary: more than 10,000 requests
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
}
SERVICES = {"Identity": csi.DESCRIPTOR.services_by_name["Identity"]}
SERVICES["Controller"] = csi.DESCRIPTOR.services_by_name["Controller"]
SERVICES["Node"] = csi.DESCRIPTOR.services_by_name["Node"]
_CRASH_CODES = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
UNIMPLEMENTED_OK = {"ControllerModifyVolume"}
METHODS = [(svc, m.name) for svc, d in SERVICES.items() for m in d.methods]


@dataclass
class Target:
    channel: grpc.Channel
    workdir: Path
    requests: list[grpc.StatusCode]  # the code each generated request was answered with


def _serve_in_thread(workdir: Path) -> Iterator[Target]:
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()

    async def main() -> None:
        sim = Simulator(SimConfig(hotplug=True, instances=1, quota_gib=4096))
        api = sim_client(sim, validate=False)
        devices = workdir / "devices"
        devices.mkdir()
        node_ops = build_node_ops(
            sim_device_dir=devices, device_timeout=0.05, state_dir=workdir / "node-state"
        )
        services = Services(
            identity=IdentityService(Health()),
            controller=ControllerService(
                build_controller_ops(api, cluster="fuzz", inflight=InFlight())
            ),
            node=NodeService(node_id=sim.local_instance_id, ops=node_ops),
        )
        server = CsiServer(f"unix://{workdir}/csi.sock", services)
        await server.start()
        ready.set()
        await stop.wait()
        await server.stop(grace=1)
        await api.aclose()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    channel = grpc.insecure_channel(f"unix://{workdir}/csi.sock")
    try:
        yield Target(channel, workdir, [])
    finally:
        channel.close()
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    workdir = tmp_path_factory.mktemp("hostile")
    (workdir / "dir").mkdir()
    (workdir / "file").write_text("not a target")
    (workdir / "to-proc").symlink_to("/proc")
    yield from _serve_in_thread(workdir)


# ---- strategies ----

NAMES = st.sampled_from(
    [
        "",
        "pvc-1",
        "csi-0123456789abcdef",
        "snap-0123456789abcdef",
        "tmp-grow-0123456789abcdef",
        "6f0c7d8e-1a2b-4c3d-8e9f-0a1b2c3d4e5f",
        "UPPER",
        "a" * 300,
        "-leading-dash",
        "name with spaces",
        "nul\x00byte",
        "ünïcødé",
        "../../etc",
    ]
)
TEXT = st.one_of(NAMES, st.text(max_size=40))


def _paths(workdir: Path) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(
            [
                "",
                "relative/path",
                "..",
                f"{workdir}/../{workdir.name}/dir",
                f"{workdir}/dir",
                f"{workdir}/file",
                f"{workdir}/to-proc",
                f"{workdir}/missing/deeper",
                f"{workdir}/dir\x00evil",
            ]
        ),
        st.text(max_size=20).map(lambda t: f"{workdir}/gen-{t.replace('/', '_')}"),
    )


def _value(field: FieldDescriptor, workdir: Path, depth: int) -> st.SearchStrategy[object]:
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        return _paths(workdir) if field.name.endswith("path") else TEXT
    if t in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_INT32):
        bits = 63 if t == FieldDescriptor.TYPE_INT64 else 31
        limit = 1 << bits
        special = [0, 1, -1, 1 << 30, (1 << 30) + 1, 1023 << 30, 1 << 40, -(1 << 40)]
        interesting = st.sampled_from([v for v in special if -limit <= v < limit])
        return st.one_of(interesting, st.integers(-(1 << bits), (1 << bits) - 1))
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.TYPE_ENUM:
        return st.integers(-1, 20)  # including values no enum defines
    assert field.message_type is not None
    return message(field.message_type, workdir, depth + 1)


@st.composite
def _message(draw: st.DrawFn, desc: Descriptor, workdir: Path, depth: int) -> Message:
    msg: Message = message_factory.GetMessageClass(desc)()
    if depth > 4:
        return msg
    for field in desc.fields:
        if not draw(st.booleans()):
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            entries = draw(st.dictionaries(TEXT, TEXT, max_size=3))
            getattr(msg, field.name).update(entries)
        elif field.is_repeated:
            values = draw(st.lists(_value(field, workdir, depth), max_size=3))
            container = getattr(msg, field.name)
            for v in values:
                if isinstance(v, Message):
                    container.add().CopyFrom(v)
                else:
                    container.append(v)
        else:
            value = draw(_value(field, workdir, depth))
            if isinstance(value, Message):
                getattr(msg, field.name).CopyFrom(value)
            else:
                setattr(msg, field.name, value)
    return msg


def message(desc: Descriptor, workdir: Path, depth: int = 0) -> st.SearchStrategy[Message]:
    return _message(desc, workdir, depth)


# ---- the test ----


@pytest.mark.parametrize(("service", "method"), METHODS, ids=[m for _, m in METHODS])
def test_every_rpc_survives_hostile_requests(target: Target, service: str, method: str) -> None:
    desc = SERVICES[service].methods_by_name[method]
    stub = getattr(csi_grpc, f"{service}Stub")(target.channel)
    call = getattr(stub, method)
    seen: set[grpc.StatusCode] = set()

    @settings(
        max_examples=EXAMPLES_PER_RPC,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(request=message(desc.input_type, target.workdir))
    def run(request: Message) -> None:
        try:
            call(request, timeout=30)
            code, detail = grpc.StatusCode.OK, ""
        except grpc.RpcError as exc:
            code, detail = exc.code(), exc.details() or ""
        target.requests.append(code)
        allowed = ALLOWED | (
            {grpc.StatusCode.UNIMPLEMENTED} if method in UNIMPLEMENTED_OK else set()
        )
        assert code in allowed, f"{method}({request}) -> {code.name}: {detail}"
        seen.add(code)

    run()
    assert seen, "no request was sent"
    assert (target.workdir / "file").read_text() == "not a target"


def test_ten_thousand_requests_were_sent(target: Target, sanity_report) -> None:
    crashes = sum(code in _CRASH_CODES for code in target.requests)
    sanity_report(
        f"hostile input: {len(target.requests)} generated requests, {crashes} UNKNOWN/INTERNAL"
    )
    assert len(target.requests) >= 10_000
    assert crashes == 0
