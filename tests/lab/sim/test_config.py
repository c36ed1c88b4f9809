"""The simulator's settings: the per-operation latency (``--op-latency-ms``) and its parser."""

from __future__ import annotations

import pytest

from csi_oxide_lab.sim import SimConfig, Simulator
from csi_oxide_lab.sim.config import (
    MUTATION,
    OPERATION_CLASSES,
    OPERATIONS,
    READ,
    OpLatency,
    op_latency_for,
    parse_op_latency,
)
from csi_oxide_lab.sim.handlers import ROUTES


def test_the_classes_split_every_served_operation_by_method() -> None:
    reads, mutations = OPERATION_CLASSES[READ], OPERATION_CLASSES[MUTATION]
    assert not reads & mutations
    assert reads | mutations == OPERATIONS == {op for _, _, op, _ in ROUTES}
    assert {"disk_view", "disk_list", "instance_view", "snapshot_view"} <= reads
    assert {
        "disk_create",
        "disk_delete",
        "instance_disk_attach",
        "instance_disk_detach",
        "snapshot_create",
        "snapshot_delete",
    } <= mutations


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ()),
        ("read=20:50", (OpLatency("read", 20, 50),)),
        (
            "mutation=300:800, read=20:50",
            (OpLatency("mutation", 300, 800), OpLatency("read", 20, 50)),
        ),
        ("disk_create=250", (OpLatency("disk_create", 250, 250),)),
        ("disk_view=0:0.5", (OpLatency("disk_view", 0, 0.5),)),
    ],
)
def test_parse(text: str, expected: tuple[OpLatency, ...]) -> None:
    assert parse_op_latency(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("read", "want KEY=LOW:HIGH or KEY=MS"),
        ("read=", "want KEY=LOW:HIGH or KEY=MS"),
        ("=20", "want KEY=LOW:HIGH or KEY=MS"),
        ("read=20:50,", "an empty entry"),
        ("read=fast", "'fast' is not a number of milliseconds"),
        ("read=20:", "'' is not a number of milliseconds"),
        ("read=nan", "not a finite number"),
        ("read=inf", "not a finite number"),
        ("read=50:20", "want 0 <= LOW <= HIGH"),
        ("read=-1:5", "want 0 <= LOW <= HIGH"),
        ("read=1:4000000", "want 0 <= LOW <= HIGH <= 3600000"),
        ("disk_creat=300", "'disk_creat' is neither an operation class"),
        ("read=1,read=2", "'read' is given twice"),
    ],
)
def test_parse_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_op_latency(text)


def test_an_operation_entry_beats_its_class() -> None:
    entries = parse_op_latency("mutation=300:800,read=20:50,disk_create=1000:1200")
    assert op_latency_for(entries, "disk_create") == OpLatency("disk_create", 1000, 1200)
    assert op_latency_for(entries, "disk_delete") == OpLatency("mutation", 300, 800)
    assert op_latency_for(entries, "instance_view") == OpLatency("read", 20, 50)
    assert op_latency_for(parse_op_latency("read=5"), "disk_create") is None


def test_the_simulator_draws_each_operation_from_its_range() -> None:
    config = SimConfig(
        latency_ms=1, op_latency=parse_op_latency("mutation=300:800,read=20:50"), seed=4
    )
    sim = Simulator(config)
    try:
        creates = [sim.draw_delay("disk_create") for _ in range(200)]
        views = [sim.draw_delay("disk_view") for _ in range(200)]
        unrouted = [sim.draw_delay(None) for _ in range(5)]
    finally:
        sim.close()
    assert all(0.301 <= d <= 0.801 for d in creates)
    assert all(0.021 <= d <= 0.051 for d in views)
    assert max(creates) - min(creates) > 0.4  # spread over the range, not a constant
    assert max(views) - min(views) > 0.02
    assert unrouted == [0.001] * 5  # no operation: --latency-ms alone
    again = Simulator(config)
    try:
        assert [again.draw_delay("disk_create") for _ in range(200)] == creates
    finally:
        again.close()


def test_a_simulator_refuses_a_key_given_twice() -> None:
    twice = (OpLatency("read", 1, 2), OpLatency("read", 3, 4))
    with pytest.raises(ValueError, match="twice"):
        Simulator(SimConfig(op_latency=twice))


def test_op_latency_refuses_bad_entries_when_built_directly() -> None:
    with pytest.raises(ValueError, match="neither an operation class"):
        OpLatency("writes", 1, 2)
    with pytest.raises(ValueError, match="LOW <= HIGH"):
        OpLatency("read", 3, 2)


def test_repr_names_the_knobs_not_the_token() -> None:
    config = SimConfig(token="oxide-token-secret", op_latency=parse_op_latency("read=2"))
    text = repr(config)
    assert "secret" not in text
    assert "op_latency=(OpLatency(key='read', low_ms=2.0, high_ms=2.0),)" in text
