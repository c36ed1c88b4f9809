"""JSON <-> domain values: request bodies match the published schema, responses parse strictly."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from csi_oxide.oxide import wire
from csi_oxide.oxide.types import (
    Disk,
    DiskSpec,
    DiskState,
    InstanceState,
    SnapshotState,
)
from csi_oxide_lab.sim import contract
from tests.oxide_bodies import (
    DISK_UUID,
    IMAGE_UUID,
    INSTANCE_UUID,
    PROJECT_UUID,
    SNAPSHOT_UUID,
    blank_source,
    disk_body,
    disk_create_body,
    image_body,
    image_source,
    instance_body,
    snapshot_body,
    snapshot_source,
)
from tests.units import GIB

SPEC = contract.spec_path()


def test_blank_disk_body_is_distributed_with_block_size() -> None:
    body = wire.disk_create_body(DiskSpec("csi-a", "desc", 3 * 1024**3, block_size=512))
    assert body == disk_create_body("csi-a", 3 * GIB, blank_source(512), description="desc")


def test_snapshot_disk_body_names_the_snapshot() -> None:
    body = wire.disk_create_body(DiskSpec("csi-a", "", 1024**3, snapshot_id=SNAPSHOT_UUID))
    source = snapshot_source(SNAPSHOT_UUID)
    assert body["disk_backend"] == {"type": "distributed", "disk_source": source}


@pytest.mark.parametrize(
    ("block_size", "snapshot_id"), [(None, None), (4096, SNAPSHOT_UUID)], ids=["neither", "both"]
)
def test_disk_spec_needs_exactly_one_source(
    block_size: int | None, snapshot_id: str | None
) -> None:
    # A programmer's error (the controller builds every spec): a bug, not INVALID_ARGUMENT.
    with pytest.raises(ValueError, match="exactly one"):
        DiskSpec("csi-a", "", 1024**3, block_size, snapshot_id)


def test_request_bodies_use_the_published_property_names() -> None:
    schemas = json.loads(SPEC.read_text())["components"]["schemas"]
    assert set(wire.snapshot_create_body("s", "d", "disk")) == set(
        schemas["SnapshotCreate"]["required"]
    )
    assert set(wire.disk_path_body("disk")) == set(schemas["DiskPath"]["required"])
    blank = wire.disk_create_body(DiskSpec("csi-a", "", 1024**3, block_size=4096))
    assert set(blank) == set(schemas["DiskCreate"]["required"])


def test_disk_parses_every_field() -> None:
    disk = wire.parse_disk(
        disk_body(
            description="d",
            size=2 * GIB,
            snapshot_id=SNAPSHOT_UUID,
            time_created="2026-01-02T03:04:05.123456789Z",
        )
    )
    assert disk == Disk(
        id=DISK_UUID,
        name="csi-0123456789abcdef",
        description="d",
        project_id=PROJECT_UUID,
        size=2 * GIB,
        block_size=4096,
        state=DiskState.DETACHED,
        instance_id=None,
        snapshot_id=SNAPSHOT_UUID,
        image_id=None,
        read_only=False,
        disk_type="distributed",
        time_created=datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC),
    )


@pytest.mark.parametrize("state", ["attaching", "attached", "detaching"])
def test_attachment_states_carry_the_instance(state: str) -> None:
    disk = wire.parse_disk(disk_body(state=state))
    assert disk.state == DiskState(state)
    assert disk.instance_id == INSTANCE_UUID
    assert disk.published


def test_every_published_disk_state_parses() -> None:
    schema = json.loads(SPEC.read_text())["components"]["schemas"]["DiskState"]
    for variant in schema["oneOf"]:
        (value,) = variant["properties"]["state"]["enum"]
        state: dict[str, object] = {"state": value}
        if "instance" in variant["required"]:
            state["instance"] = INSTANCE_UUID
        assert wire.parse_disk(disk_body(state=state)).state == DiskState(value)


def test_unknown_disk_state_is_a_clear_unknown_value_error() -> None:
    with pytest.raises(wire.UnknownValueError, match=r"unknown state of disk .*'resizing'"):
        wire.parse_disk(disk_body(state="resizing"))


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("size", "big", "'size': expected an integer"),
        ("size", True, "'size': expected an integer"),
        ("name", None, "'name': expected a string"),
        ("read_only", "no", "'read_only': expected a boolean"),
        ("time_created", "yesterday", "not an RFC 3339 timestamp"),
        ("state", "detached", "disk state: expected a JSON object"),
    ],
)
def test_malformed_disk_fields_raise_wire_error(field: str, value: object, match: str) -> None:
    body = disk_body()
    body[field] = value
    with pytest.raises(wire.WireError, match=match) as info:
        wire.parse_disk(body)
    assert not isinstance(info.value, wire.UnknownValueError)


def test_attached_state_without_instance_is_malformed() -> None:
    with pytest.raises(wire.WireError, match="'instance'"):
        wire.parse_disk(disk_body(state={"state": "attached"}))


def test_snapshot_parses() -> None:
    snap = wire.parse_snapshot(snapshot_body("snap-1"))
    assert (snap.name, snap.disk_id, snap.state, snap.size) == (
        "snap-1",
        DISK_UUID,
        SnapshotState.READY,
        1024**3,
    )


def test_instance_parses_and_rejects_unknown_run_state() -> None:
    inst = wire.parse_instance(instance_body(boot_disk_id=DISK_UUID, run_state="stopped"))
    assert (inst.id, inst.run_state, inst.boot_disk_id) == (
        INSTANCE_UUID,
        InstanceState.STOPPED,
        DISK_UUID,
    )
    assert wire.parse_instance(instance_body(boot_disk_id=None)).boot_disk_id is None
    with pytest.raises(wire.UnknownValueError, match="run_state of instance 'node-1'"):
        wire.parse_instance(instance_body(run_state="hibernating"))


def test_utilization_reads_storage_of_capacity_and_provisioned() -> None:
    util = wire.parse_utilization(
        {
            "capacity": {"cpus": 8, "memory": 1, "storage": 100 * 1024**3},
            "provisioned": {"cpus": 2, "memory": 1, "storage": 30 * 1024**3},
        }
    )
    assert (util.capacity_storage, util.provisioned_storage) == (100 * 1024**3, 30 * 1024**3)
    assert util.free_storage == 70 * 1024**3


def test_results_skip_unknown_values_but_keep_the_rest() -> None:
    body = {
        "items": [disk_body(), disk_body("csi-b", state="future")],
        "next_page": "tok",
    }
    page = wire.parse_results(body, wire.parse_disk)
    assert [d.name for d in page.items] == ["csi-0123456789abcdef"]
    assert len(page.skipped) == 1
    assert "csi-b" in str(page.skipped[0])
    assert page.next_page == "tok"


def test_results_with_a_malformed_item_raise() -> None:
    with pytest.raises(wire.WireError):
        wire.parse_results({"items": [{"id": 1}], "next_page": None}, wire.parse_disk)
    with pytest.raises(wire.WireError, match="'items' is not a list"):
        wire.parse_page({"items": {}, "next_page": None})


def test_error_body_tolerates_anything() -> None:
    full = wire.parse_error_body(
        {"request_id": "r1", "error_code": "ObjectNotFound", "message": "not found: disk"}
    )
    assert full == wire.ErrorBody("ObjectNotFound", "not found: disk", "r1")
    assert wire.parse_error_body({"request_id": "r2", "message": "m"}).error_code is None
    assert wire.parse_error_body("oops") == wire.ErrorBody(None, None, None)
    assert wire.parse_error_body({"message": 5}).message is None


def test_image_disk_body_names_the_image_and_read_only_only_when_set() -> None:
    body = wire.disk_create_body(DiskSpec("csi-a", "", 1024**3, image_id=IMAGE_UUID))
    assert body["disk_backend"] == {"type": "distributed", "disk_source": image_source(IMAGE_UUID)}
    ro = wire.disk_create_body(
        DiskSpec("csi-a", "", 1024**3, snapshot_id=SNAPSHOT_UUID, read_only=True)
    )
    source = snapshot_source(SNAPSHOT_UUID, read_only=True)
    assert ro["disk_backend"] == {"type": "distributed", "disk_source": source}


def test_a_blank_disk_cannot_be_read_only() -> None:
    with pytest.raises(ValueError, match="read-only"):
        DiskSpec("csi-a", "", 1024**3, block_size=4096, read_only=True)


def test_image_create_body_has_every_required_property() -> None:
    schemas = json.loads(SPEC.read_text())["components"]["schemas"]
    body = wire.image_create_body("img-a", "d", SNAPSHOT_UUID)
    assert set(body) == set(schemas["ImageCreate"]["required"])
    assert body["source"] == {"type": "snapshot", "id": SNAPSHOT_UUID}


@pytest.mark.parametrize("project_id", [None, "6f0c7d8e-1a2b-4c3d-8e9f-0a1b2c3d4e60"])
def test_image_parses_project_and_silo_images(project_id: str | None) -> None:
    body = image_body(project_id=project_id, size=2 * GIB, block_size=512)
    image = wire.parse_image(body)
    assert (image.id, image.project_id, image.size, image.block_size) == (
        IMAGE_UUID,
        project_id,
        2 * 1024**3,
        512,
    )
    with pytest.raises(wire.WireError, match="block_size"):
        wire.parse_image({**body, "block_size": 1000})
