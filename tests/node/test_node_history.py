"""The format history's rules (pure): when a device may be formatted, and what each step leaves."""

from __future__ import annotations

import pytest

from csi_oxide.contract.publish_context import Birth, Origin
from csi_oxide.errors import FailedPreconditionError
from csi_oxide.node.fs import Signature
from csi_oxide.node.history import (
    HISTORIES,
    MKFS_DONE,
    MKFS_STARTED,
    RAW,
    check_formattable,
    handed_out_raw,
    interrupted_mkfs,
    mkfs_finished,
    vouched_blank,
)

DISK = "0d3f6a2b-9c4e-4f1a-8b7d-5e2c1a9f3b60"
NEW_DISK = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"
WHERE = "volume csi-0123456789abcdef (/dev/nvme1n1)"
NOTHING = Signature()


def test_a_disk_handed_out_raw_holds_data_from_then_on() -> None:
    after = {history: handed_out_raw(history) for history in HISTORIES}
    assert after == {"": RAW, MKFS_STARTED: RAW, MKFS_DONE: MKFS_DONE, RAW: RAW}


def test_only_a_started_mkfs_is_finished_by_finding_its_filesystem() -> None:
    assert [h for h in HISTORIES if mkfs_finished(h)] == [MKFS_STARTED]


def test_an_interrupted_mkfs_is_one_on_that_very_disk_and_a_known_one() -> None:
    assert interrupted_mkfs(MKFS_STARTED, DISK, DISK)
    assert not interrupted_mkfs(MKFS_STARTED, DISK, NEW_DISK)  # another disk of that name
    assert not interrupted_mkfs(MKFS_STARTED, None, DISK)  # a history without its disk
    assert not interrupted_mkfs(MKFS_STARTED, None, None)  # the controller sent no disk
    for history in ("", MKFS_DONE, RAW):
        assert not interrupted_mkfs(history, DISK, DISK)


@pytest.mark.parametrize("origin", [*Origin, None])
def test_only_a_disk_born_blank_is_vouched_for_by_its_interrupted_mkfs(
    origin: Origin | None,
) -> None:
    born = Birth(origin, DISK)
    assert vouched_blank(born, MKFS_STARTED, DISK) is (origin is Origin.BLANK)
    assert not vouched_blank(born, MKFS_STARTED, NEW_DISK)
    assert not vouched_blank(Birth(origin, None), MKFS_STARTED, DISK)
    assert not vouched_blank(born, "", DISK)


@pytest.mark.parametrize("history", ["", MKFS_STARTED])
def test_a_device_without_a_signature_is_formatted_when_proven_blank(history: str) -> None:
    check_formattable(WHERE, history, NOTHING, "ext4", zeros=True, vouched=False)
    check_formattable(WHERE, history, NOTHING, "ext4", zeros=False, vouched=True)


@pytest.mark.parametrize("history", HISTORIES)
@pytest.mark.parametrize(
    ("found", "named"),
    [
        (Signature(fstype="xfs", usage="filesystem"), "'xfs'"),
        (Signature(pttype="gpt"), "'gpt'"),
        (Signature(usage="raid"), "'raid'"),
    ],
)
def test_no_proof_formats_over_a_signature(history: str, found: Signature, named: str) -> None:
    with pytest.raises(FailedPreconditionError, match="holds") as refused:
        check_formattable(WHERE, history, found, "ext4", zeros=True, vouched=True)
    assert str(refused.value).startswith(f"{WHERE} holds {named}, not ext4; it was left untouched")


@pytest.mark.parametrize(
    ("history", "held"), [(MKFS_DONE, "a complete filesystem"), (RAW, "raw block data")]
)
def test_a_disk_recorded_as_holding_data_is_never_blank_again(history: str, held: str) -> None:
    with pytest.raises(FailedPreconditionError, match=f"recorded that it held {held}"):
        check_formattable(WHERE, history, NOTHING, "ext4", zeros=True, vouched=True)


@pytest.mark.parametrize("history", ["", MKFS_STARTED])
def test_without_zeros_or_the_controllers_word_a_device_is_not_blank(history: str) -> None:
    with pytest.raises(FailedPreconditionError, match="has no filesystem but is not blank"):
        check_formattable(WHERE, history, NOTHING, "ext4", zeros=False, vouched=False)
