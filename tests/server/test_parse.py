from __future__ import annotations

import pytest

from csi_oxide._csi import csi_pb2 as csi
from csi_oxide.contract.volumes import CapacityRange
from csi_oxide.errors import InvalidArgumentError
from csi_oxide.server import parse

Mode = csi.VolumeCapability.AccessMode


def mount_cap(fs: str = "", flags: tuple[str, ...] = (), mode: int = Mode.SINGLE_NODE_WRITER):
    return csi.VolumeCapability(
        mount=csi.VolumeCapability.MountVolume(fs_type=fs, mount_flags=list(flags)),
        access_mode=Mode(mode=mode),  # type: ignore[arg-type]
    )


def block_cap(mode: int = Mode.SINGLE_NODE_WRITER):
    return csi.VolumeCapability(
        block=csi.VolumeCapability.BlockVolume(),
        access_mode=Mode(mode=mode),  # type: ignore[arg-type]
    )


def test_capacity_range_validation() -> None:
    assert parse.capacity_range(None) == CapacityRange(0, 0)
    with pytest.raises(InvalidArgumentError, match="negative"):
        parse.capacity_range(csi.CapacityRange(required_bytes=-1))
    with pytest.raises(InvalidArgumentError, match="larger"):
        parse.capacity_range(csi.CapacityRange(required_bytes=2, limit_bytes=1))


def test_capability_mount_defaults_to_ext4() -> None:
    cap = parse.capability(mount_cap())
    assert cap.access_type is parse.AccessType.MOUNT
    assert cap.fstype == "ext4"
    assert not cap.block


def test_capability_block() -> None:
    cap = parse.capability(block_cap(Mode.SINGLE_NODE_READER_ONLY))
    assert cap.block
    assert cap.read_only_mode


@pytest.mark.parametrize(
    ("cap", "message"),
    [
        (csi.VolumeCapability(access_mode=Mode(mode=Mode.SINGLE_NODE_WRITER)), "access_type"),
        (csi.VolumeCapability(mount=csi.VolumeCapability.MountVolume()), "access_mode is required"),
        (mount_cap(mode=Mode.UNKNOWN), "UNKNOWN"),
        (mount_cap(fs="btrfs"), "btrfs"),
        (mount_cap(flags=("bind",)), "not allowed"),
        (mount_cap(flags=("a b",)), "whitespace"),
        (mount_cap(flags=("",)), "empty"),
    ],
)
def test_capability_errors(cap: csi.VolumeCapability, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        parse.capability(cap)


@pytest.mark.parametrize("fs", ["ext4", "ext3", "xfs"])
def test_capability_accepts_each_supported_filesystem(fs: str) -> None:
    cap = parse.capability(mount_cap(fs=fs, flags=("noatime",)))
    assert (cap.fstype, cap.mount_flags) == (fs, ("noatime",))


@pytest.mark.parametrize("fs", ["btrfs", "ext2", "vfat", "EXT3"])
def test_capability_refuses_other_filesystems_naming_the_supported_ones(fs: str) -> None:
    with pytest.raises(InvalidArgumentError, match="not supported") as refused:
        parse.capability(mount_cap(fs=fs))
    assert repr(fs) in str(refused.value)
    assert all(name in str(refused.value) for name in ("ext4", "ext3", "xfs"))


@pytest.mark.parametrize("key", ["fsType", "csi.storage.k8s.io/fstype"])
def test_volume_parameters_accept_ext3(key: str) -> None:
    assert parse.volume_parameters({key: "ext3"}) == parse.VolumeParameters()


def test_capabilities_requires_one() -> None:
    with pytest.raises(InvalidArgumentError, match="required"):
        parse.capabilities([])


@pytest.mark.parametrize(
    ("mode", "supported"),
    [
        (Mode.SINGLE_NODE_WRITER, True),
        (Mode.SINGLE_NODE_READER_ONLY, True),
        (Mode.SINGLE_NODE_SINGLE_WRITER, True),
        (Mode.SINGLE_NODE_MULTI_WRITER, True),
        (Mode.MULTI_NODE_READER_ONLY, False),
        (Mode.MULTI_NODE_SINGLE_WRITER, False),
        (Mode.MULTI_NODE_MULTI_WRITER, False),
    ],
)
def test_unsupported_reason(mode: int, supported: bool) -> None:
    reason = parse.unsupported_reason(parse.capability(mount_cap(mode=mode)))
    assert (reason is None) is supported
    if reason:
        assert "one instance at a time" in reason


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("/var/lib/x", True),
        ("/a/../b", True),
        ("some/path", False),
        ("", False),
        ("/a\x00b", False),
    ],
)
def test_path(value: str, ok: bool) -> None:
    if ok:
        assert parse.path(value, "target_path").startswith("/")
        assert ".." not in parse.path(value, "target_path")
    else:
        with pytest.raises(InvalidArgumentError):
            parse.path(value, "target_path")


def test_volume_parameters() -> None:
    params = parse.volume_parameters(
        {
            "blockSize": "512",
            "fsType": "XFS",
            "csi.storage.k8s.io/pvc/name": "data",
            "csi.storage.k8s.io/pvc/namespace": "team",
            "csi.storage.k8s.io/pv/name": "pvc-123",
        }
    )
    # fsType is checked but carries nothing: the filesystem comes with each volume capability.
    assert params == parse.VolumeParameters(block_size=512, pvc="team/data", pv="pvc-123")
    assert parse.volume_parameters({}).block_size is None  # not given: the blank default


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"type": "ssd"}, "unknown"),
        ({"blockSize": "1024"}, "blockSize"),
        ({"fsType": "btrfs"}, "btrfs"),
    ],
)
def test_volume_parameters_refused(params: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        parse.volume_parameters(params)


def test_snapshot_parameters() -> None:
    parse.snapshot_parameters({"csi.storage.k8s.io/volumesnapshot/name": "s"})
    with pytest.raises(InvalidArgumentError):
        parse.snapshot_parameters({"foo": "bar"})


def test_a_few_unknown_keys_are_named_in_full() -> None:
    with pytest.raises(InvalidArgumentError) as info:
        parse.volume_parameters({"zone": "a", "type": "ssd", "fsType": "ext4"})
    assert "parameter(s) type, zone: accepted are" in str(info.value)


@pytest.mark.parametrize(
    "check", [parse.volume_parameters, parse.snapshot_parameters], ids=["volume", "snapshot"]
)
def test_thousands_of_unknown_keys_make_a_short_message(check: object) -> None:
    # 10,000 keys of 110 characters: the message names the first three, cut, and counts the rest.
    params = {f"key-{i:05d}-{'x' * 100}": "v" for i in reversed(range(10_000))}
    with pytest.raises(InvalidArgumentError) as info:
        check(params)  # type: ignore[operator]
    message = str(info.value)
    assert len(message) < 400
    shown = f"key-00000-{'x' * (parse.KEY_SHOWN - 10)}..."
    assert shown in message
    assert "key-00002-" in message
    assert "key-00003-" not in message
    assert "and 9997 more" in message


@pytest.mark.parametrize("mode", [-1, 8, 99])
def test_access_mode_outside_the_enum_is_invalid(mode: int) -> None:
    cap = csi.VolumeCapability(
        block=csi.VolumeCapability.BlockVolume(),
        access_mode=csi.VolumeCapability.AccessMode(mode=mode),  # type: ignore[arg-type]
    )
    with pytest.raises(InvalidArgumentError, match="not a CSI access mode"):
        parse.capability(cap)


@pytest.mark.parametrize(
    ("value", "as_image"), [(None, False), ("snapshot", False), ("image", True)]
)
def test_snapshot_type(value: str | None, as_image: bool) -> None:
    params = {} if value is None else {"snapshotType": value}
    assert parse.snapshot_parameters(params).as_image is as_image


def test_unknown_snapshot_type_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="snapshotType 'Image' must be one of"):
        parse.snapshot_parameters({"snapshotType": "Image"})


@pytest.mark.parametrize(("value", "read_only"), [("true", True), ("FALSE", False), ("True", True)])
def test_read_only_parameter(value: str, read_only: bool) -> None:
    assert parse.volume_parameters({"readOnly": value}).read_only is read_only
    assert parse.volume_parameters({}).read_only is False


def test_read_only_parameter_must_be_a_boolean() -> None:
    with pytest.raises(InvalidArgumentError, match="readOnly is 'yes': use true or false"):
        parse.volume_parameters({"readOnly": "yes"})
