"""``remove_taint`` against the fake API server: the Node read, patched under a test of its
resourceVersion, and read again when another writer came first."""

from __future__ import annotations

from typing import Any

import pytest

from csi_oxide.kube.client import JSON_PATCH, KubeClient, KubeConfig, KubeError
from csi_oxide.kube.taint import AGENT_NOT_READY, remove_taint
from tests.kube.fake_api import TOKEN, FakeKubeApi

NODE = "worker-1"
OURS_NO_SCHEDULE = {"key": AGENT_NOT_READY, "effect": "NoSchedule"}
OURS_NO_EXECUTE = {"key": AGENT_NOT_READY, "effect": "NoExecute"}
OTHER = {"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}
CONTROL_PLANE = {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}


@pytest.fixture
def client(api: FakeKubeApi) -> KubeClient:
    return KubeClient(KubeConfig.explicit(api.url, TOKEN))


def patches(api: FakeKubeApi) -> list[Any]:
    return [s.body for s in api.requests("PATCH")]


def test_every_taint_with_the_key_goes_and_the_others_stay(
    api: FakeKubeApi, client: KubeClient
) -> None:
    api.put_node(NODE, [OURS_NO_SCHEDULE, OTHER, OURS_NO_EXECUTE, CONTROL_PLANE])
    version = api.node(NODE)["metadata"]["resourceVersion"]
    assert remove_taint(client, NODE, AGENT_NOT_READY) is True
    assert api.node(NODE)["spec"]["taints"] == [OTHER, CONTROL_PLANE]
    assert patches(api) == [
        [
            {"op": "test", "path": "/metadata/resourceVersion", "value": version},
            {"op": "replace", "path": "/spec/taints", "value": [OTHER, CONTROL_PLANE]},
        ]
    ]
    assert {s.content_type for s in api.requests("PATCH")} == {JSON_PATCH}


def test_the_last_taint_goes_with_a_remove(api: FakeKubeApi, client: KubeClient) -> None:
    api.put_node(NODE, [OURS_NO_EXECUTE])
    assert remove_taint(client, NODE, AGENT_NOT_READY) is True
    assert "taints" not in api.node(NODE)["spec"]
    assert patches(api)[0][1] == {"op": "remove", "path": "/spec/taints"}


@pytest.mark.parametrize("taints", [None, [], [OTHER]])
def test_without_the_taint_nothing_is_written(
    api: FakeKubeApi, client: KubeClient, taints: list[dict[str, str]] | None
) -> None:
    api.put_node(NODE, taints)
    before = api.node(NODE)
    assert remove_taint(client, NODE, AGENT_NOT_READY) is False
    assert [s.method for s in api.requests()] == ["GET"]
    assert api.node(NODE) == before


def test_a_concurrent_writer_fails_the_test_once_and_the_removal_is_done_again(
    api: FakeKubeApi, client: KubeClient
) -> None:
    api.put_node(NODE, [OURS_NO_SCHEDULE, OTHER])
    raced: list[str] = []

    def another_writer(method: str, _path: str) -> None:
        if method == "PATCH" and not raced:  # between our read and our patch, once
            raced.append(method)
            api.change_node(NODE, lambda n: n["spec"]["taints"].append(CONTROL_PLANE))

    api.before_write = another_writer
    assert remove_taint(client, NODE, AGENT_NOT_READY) is True
    assert [(s.method, s.status) for s in api.requests()] == [
        ("GET", 200),
        ("PATCH", 422),  # the test of the resourceVersion failed
        ("GET", 200),
        ("PATCH", 200),
    ]
    # The second patch was made from the second read: the other writer's taint is kept.
    assert api.node(NODE)["spec"]["taints"] == [OTHER, CONTROL_PLANE]


def test_a_conflict_is_retried_too(api: FakeKubeApi, client: KubeClient) -> None:
    api.put_node(NODE, [OURS_NO_SCHEDULE])
    api.conflicting_patches = 2
    assert remove_taint(client, NODE, AGENT_NOT_READY) is True
    assert [s.status for s in api.requests("PATCH")] == [409, 409, 200]


def test_a_writer_that_always_comes_first_is_given_up_on(
    api: FakeKubeApi, client: KubeClient
) -> None:
    api.put_node(NODE, [OURS_NO_SCHEDULE])
    api.before_write = lambda method, _path: api.change_node(NODE, lambda n: None)
    with pytest.raises(KubeError) as failed:
        remove_taint(client, NODE, AGENT_NOT_READY, attempts=3)
    assert failed.value.status == 422
    assert len(api.requests("PATCH")) == 3
    assert api.node(NODE)["spec"]["taints"] == [OURS_NO_SCHEDULE]


def test_a_missing_node_is_not_found(api: FakeKubeApi, client: KubeClient) -> None:
    with pytest.raises(KubeError) as failed:
        remove_taint(client, "no-such-node", AGENT_NOT_READY)
    assert failed.value.not_found


def test_an_error_other_than_a_race_is_not_retried(api: FakeKubeApi, client: KubeClient) -> None:
    api.put_node(NODE, [OURS_NO_SCHEDULE])

    def delete(_method: str, _path: str) -> None:  # the Node goes between our read and patch
        del api.nodes[NODE]

    api.before_write = delete
    with pytest.raises(KubeError) as failed:
        remove_taint(client, NODE, AGENT_NOT_READY)
    assert failed.value.not_found
    assert len(api.requests("PATCH")) == 1
