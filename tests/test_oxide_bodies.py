"""The tests' Oxide bodies (``tests/oxide_bodies.py``) are what the published document says:
each answer valid for its endpoint, each ``DiskCreate`` a valid request. A test that spoils a
field then spoils exactly that field."""

from __future__ import annotations

import json

import pytest

from csi_oxide_lab.sim import contract
from tests import oxide_bodies as bodies
from tests.units import GIB

PROJECT = [("project", "csi")]
JSON = "application/json"


def _answer_errors(path: str, body: dict[str, object], status: int = 200) -> list[str]:
    request = contract.Request("GET", path, PROJECT, {}, b"")
    return contract.response_errors(request, status, json.dumps(body).encode(), JSON)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/disks/csi-0123456789abcdef", bodies.disk_body()),
        ("/v1/disks/csi-0123456789abcdef", bodies.disk_body(state="attached")),
        ("/v1/disks/csi-0123456789abcdef", bodies.disk_body(state="detaching")),
        ("/v1/snapshots/snap-0123456789abcdef", bodies.snapshot_body()),
        ("/v1/instances/node-1", bodies.instance_body()),
        ("/v1/images/img-a", bodies.image_body()),
        ("/v1/images/img-a", bodies.image_body(project_id=None, block_size=512)),
    ],
    ids=["disk", "attached", "detaching", "snapshot", "instance", "image", "silo-image"],
)
def test_each_answer_is_valid_for_its_endpoint(path: str, body: dict[str, object]) -> None:
    assert _answer_errors(path, body) == []


@pytest.mark.parametrize("code", [None, "ObjectNotFound"])
def test_the_error_body_is_an_oxide_error(code: str | None) -> None:
    body = bodies.error_body("not found: disk", code)
    assert _answer_errors("/v1/disks/csi-0123456789abcdef", body, status=404) == []
    assert ("error_code" in body) is (code is not None)


def test_a_spoiled_answer_is_caught() -> None:
    """The check above can fail: a disk without its size is not a ``Disk``."""
    body = bodies.disk_body()
    del body["size"]
    assert _answer_errors("/v1/disks/csi-0123456789abcdef", body) != []


@pytest.mark.parametrize(
    "source",
    [
        bodies.blank_source(),
        bodies.blank_source(512),
        bodies.snapshot_source(bodies.SNAPSHOT_UUID),
        bodies.snapshot_source(bodies.SNAPSHOT_UUID, read_only=True),
        bodies.image_source(bodies.IMAGE_UUID),
        bodies.image_source(bodies.IMAGE_UUID, read_only=False),
    ],
    ids=["blank", "blank-512", "snapshot", "snapshot-ro", "image", "image-rw"],
)
def test_each_disk_create_is_a_valid_request(source: dict[str, object]) -> None:
    body = json.dumps(bodies.disk_create_body("vol-a", 2 * GIB, source)).encode()
    request = contract.Request("POST", "/v1/disks", PROJECT, {"content-type": JSON}, body)
    assert contract.request_errors(request) == []


def test_the_image_create_is_a_valid_request() -> None:
    body = json.dumps(bodies.image_create_body("img-a", bodies.SNAPSHOT_UUID)).encode()
    request = contract.Request("POST", "/v1/images", PROJECT, {"content-type": JSON}, body)
    assert contract.request_errors(request) == []
