"""The mountinfo parser."""

from __future__ import annotations

import pytest

from csi_oxide.node import mountinfo

KUBELET = "/var/lib/kubelet"
SAMPLE = "\n".join(
    [
        "22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw,errors=remount-ro",
        f"36 22 7:3 / {KUBELET}/plugins/csi\\040dir/globalmount rw,relatime shared:20 master:3"
        " - xfs /dev/loop3 rw,nouuid",
        f"37 22 7:3 / {KUBELET}/pods/p/volumes/v/mount ro,relatime - xfs /dev/loop3 rw,nouuid",
        f"38 22 0:5 /loop4 {KUBELET}/pods/p/volumeDevices/dev ro,nosuid - devtmpfs udev rw",
    ]
)


def test_fields_and_escapes() -> None:
    root, staged, published, block = mountinfo.parse(SAMPLE)
    assert root.mount_point == "/"
    assert root.super_options == ("rw", "errors=remount-ro")
    assert staged.mount_point == "/var/lib/kubelet/plugins/csi dir/globalmount"
    assert (staged.major_minor, staged.fstype, staged.source) == ("7:3", "xfs", "/dev/loop3")
    assert not staged.read_only
    assert published.read_only
    assert (block.root, block.fstype) == ("/loop4", "devtmpfs")


def test_newline_and_backslash_escapes() -> None:
    assert mountinfo.unescape("a\\012b\\134c") == "a\nb\\c"


@pytest.mark.parametrize(
    "line", ["22 1 259:2 / / rw", "x 1 259:2 / / rw - ext4 /dev/a rw", "1 2 3 - ext4"]
)
def test_malformed_lines_are_refused(line: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - any of the parse errors
        mountinfo.parse_line(line)
