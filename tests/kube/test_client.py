"""``KubeClient`` against a real HTTP server: requests, answers, errors and the token."""

from __future__ import annotations

import gc
import json
import socket
import ssl
from collections.abc import MutableMapping
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from csi_oxide.errors import ConfigurationError
from csi_oxide.kube.client import (
    JSON_PATCH,
    MAX_BODY,
    KubeClient,
    KubeConfig,
    KubeError,
    ServiceAccountToken,
)
from tests.kube.fake_api import TOKEN, FakeKubeApi, RawServer, status

LEASES = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases"


def lease_body(name: str = "l", holder: str = "a", **metadata: object) -> dict[str, Any]:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, **metadata},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15},
    }


def client_of(url: str, token: str = TOKEN, timeout: float = 5.0) -> KubeClient:
    return KubeClient(KubeConfig.explicit(url, token, timeout=timeout))


# ---- requests and answers ----


def test_get_create_replace_and_patch_round_trip(api: FakeKubeApi) -> None:
    client = client_of(api.url)
    created = client.create(LEASES, lease_body())
    assert created["metadata"]["resourceVersion"]  # type: ignore[index]
    read = client.get(f"{LEASES}/l")
    assert read == created
    read["spec"]["holderIdentity"] = "b"  # type: ignore[index]
    replaced = client.replace(f"{LEASES}/l", read)
    assert replaced["spec"]["holderIdentity"] == "b"  # type: ignore[index]
    api.put_node("n1", [{"key": "k", "effect": "NoSchedule"}])
    version = api.node("n1")["metadata"]["resourceVersion"]
    patched = client.json_patch(
        "/api/v1/nodes/n1",
        [
            {"op": "test", "path": "/metadata/resourceVersion", "value": version},
            {"op": "remove", "path": "/spec/taints"},
        ],
    )
    assert "taints" not in patched["spec"]  # type: ignore[operator]
    methods = [(s.method, s.content_type, s.status) for s in api.requests()]
    assert methods == [
        ("POST", "application/json", 201),
        ("GET", "", 200),
        ("PUT", "application/json", 200),
        ("PATCH", JSON_PATCH, 200),
    ]
    assert {s.authorization for s in api.requests()} == {f"Bearer {TOKEN}"}


def test_a_status_answer_becomes_a_kube_error_with_its_reason(api: FakeKubeApi) -> None:
    client = client_of(api.url)
    with pytest.raises(KubeError) as missing:
        client.get(f"{LEASES}/absent")
    assert (missing.value.status, missing.value.reason) == (404, "NotFound")
    assert missing.value.message == 'leases.coordination.k8s.io "absent" not found'
    assert missing.value.not_found and not missing.value.conflict

    first = client.create(LEASES, lease_body())
    with pytest.raises(KubeError) as taken:
        client.create(LEASES, lease_body())
    assert (taken.value.status, taken.value.reason, taken.value.conflict) == (
        409,
        "AlreadyExists",
        True,
    )
    client.replace(f"{LEASES}/l", first)
    with pytest.raises(KubeError) as stale:
        client.replace(f"{LEASES}/l", first)  # the resourceVersion read before the last write
    assert (stale.value.status, stale.value.reason, stale.value.conflict) == (409, "Conflict", True)
    assert "the object has been modified" in str(stale.value)


def test_a_wrong_token_is_unauthorized(api: FakeKubeApi) -> None:
    with pytest.raises(KubeError) as refused:
        client_of(api.url, token="not-the-token").get(f"{LEASES}/l")
    assert (refused.value.status, refused.value.reason) == (401, "Unauthorized")


def test_an_error_without_a_status_object_takes_the_http_reason() -> None:
    def respond(handler: BaseHTTPRequestHandler) -> None:
        body = b"<html>bad gateway</html>"
        handler.send_response(502, "Bad Gateway")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    with RawServer(respond) as server, pytest.raises(KubeError) as failed:
        client_of(server.url).get("/api/v1/nodes/n")
    assert (failed.value.status, failed.value.reason, failed.value.message) == (
        502,
        "BadGateway",
        "Bad Gateway",
    )


def answer_with(code: int, body: bytes) -> Any:
    def respond(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(code)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return respond


@pytest.mark.parametrize("body", [b"[1, 2]", b"not json", b"[" * 100_000])
def test_a_success_that_is_not_a_json_object_is_an_error(body: bytes) -> None:
    with RawServer(answer_with(200, body)) as server, pytest.raises(KubeError) as failed:
        client_of(server.url).get("/api/v1/nodes/n")
    assert (failed.value.status, failed.value.reason) == (200, "InvalidAnswer")


def test_an_answer_beyond_the_cap_is_abandoned() -> None:
    with (
        RawServer(answer_with(200, b" " * (MAX_BODY + 1))) as server,
        pytest.raises(KubeError) as failed,
    ):
        client_of(server.url).get("/api/v1/nodes/n")
    assert (failed.value.status, failed.value.reason) == (0, "TooLarge")
    del failed
    gc.collect()  # a socket left open would warn now (ResourceWarning: the test fails)


def test_nothing_listening_is_status_0() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(KubeError) as failed:
        client_of(f"http://127.0.0.1:{port}").get("/api/v1/nodes/n")
    assert (failed.value.status, failed.value.reason) == (0, "ConnectionFailed")
    assert "Kubernetes API unreachable" in str(failed.value)


def test_a_server_that_never_answers_is_a_timeout() -> None:
    with socket.socket() as silent:  # accepts connections (the kernel does), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(KubeError) as failed:
            client_of(url, timeout=0.2).get("/api/v1/nodes/n")
    assert (failed.value.status, failed.value.reason) == (0, "Timeout")


def test_a_path_that_is_not_encoded_is_refused_before_sending(api: FakeKubeApi) -> None:
    for path in ("api/v1/nodes/n", "/api/v1/nodes/a b", "/api/v1/nodes/\r\nX: y"):
        with pytest.raises(ValueError, match="percent-encoded"):
            client_of(api.url).get(path)
    assert api.requests() == []


# ---- the token ----


def test_the_token_is_in_no_error_repr_or_log_even_when_the_server_echoes_it(
    logs: list[MutableMapping[str, Any]],
) -> None:
    def echo(handler: BaseHTTPRequestHandler) -> None:
        sent = handler.headers.get("Authorization", "")
        raw = sent.removeprefix("Bearer ")
        answer = status(403, f"Forbidden {raw}", f"user with {sent} may not; token={raw}")
        body = json.dumps(answer).encode()
        handler.send_response(403)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    with RawServer(echo) as server:
        client = client_of(server.url)
        with pytest.raises(KubeError) as failed:
            client.get("/api/v1/nodes/n")
    assert server.seen == [f"Bearer {TOKEN}"]  # it was sent, and echoed
    error = failed.value
    shown = [str(error), repr(error), error.message, error.reason, repr(error.args)]
    shown += [repr(client), repr(client.config), str(client.config.token), repr(logs)]
    for text in shown:
        assert TOKEN not in text
    assert "<redacted>" in error.message
    assert any(e["event"] == "kube request" for e in logs)  # the debug line was logged


def test_the_token_is_hidden_from_the_fake_api_echo_too(api: FakeKubeApi) -> None:
    api.echo_authorization = True
    with pytest.raises(KubeError) as failed:
        client_of(api.url).get(f"{LEASES}/absent")
    assert TOKEN not in str(failed.value) and TOKEN not in repr(failed.value)
    assert "Bearer <redacted>" in failed.value.message


def test_a_token_file_is_read_before_every_request(api: FakeKubeApi, tmp_path: Path) -> None:
    (tmp_path / "token").write_text("first-token\n")
    client = KubeClient(KubeConfig(api.url, ServiceAccountToken(tmp_path / "token")))
    api.token = "first-token"
    client.create(LEASES, lease_body())
    (tmp_path / "token").write_text("second-token")  # the kubelet rotated it
    api.token = "second-token"
    client.get(f"{LEASES}/l")
    assert [s.authorization for s in api.requests()] == [
        "Bearer first-token",
        "Bearer second-token",
    ]
    assert "second-token" not in repr(client.config)


def test_an_unreadable_token_file_sends_nothing(api: FakeKubeApi, tmp_path: Path) -> None:
    client = KubeClient(KubeConfig(api.url, ServiceAccountToken(tmp_path / "token")))
    with pytest.raises(KubeError) as failed:
        client.get(f"{LEASES}/l")
    assert (failed.value.status, failed.value.reason) == (0, "TokenUnreadable")
    assert api.requests() == []


# ---- configuration ----


@pytest.fixture
def account(tmp_path: Path) -> Path:
    (tmp_path / "token").write_text("sa-token-one")
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    (tmp_path / "namespace").write_text("kube-system")
    return tmp_path


def cluster_env(host: str = "10.96.0.1", port: str = "443") -> dict[str, str]:
    return {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port}


def test_in_cluster_reads_the_service_account_directory(account: Path) -> None:
    config = KubeConfig.in_cluster(env=cluster_env(), directory=account)
    assert config.base_url == "https://10.96.0.1:443"
    assert config.ca_file == account / "ca.crt"
    assert config.namespace == "kube-system"
    assert config.token() == "sa-token-one"
    (account / "token").write_text("sa-token-two\n")
    assert config.token() == "sa-token-two"  # read again: projected tokens rotate
    assert "sa-token" not in repr(config)


def test_in_cluster_puts_an_ipv6_host_in_brackets(account: Path) -> None:
    config = KubeConfig.in_cluster(env=cluster_env("fd00:10:96::1", "6443"), directory=account)
    assert config.base_url == "https://[fd00:10:96::1]:6443"


@pytest.mark.parametrize(
    ("env", "remove", "words"),
    [
        ({}, None, "KUBERNETES_SERVICE_HOST"),
        ({"KUBERNETES_SERVICE_HOST": "10.96.0.1"}, None, "KUBERNETES_SERVICE_PORT"),
        (cluster_env(), "token", "service-account token"),
        (cluster_env(), "ca.crt", "CA bundle"),
        (cluster_env(), "namespace", "namespace"),
        (cluster_env(port="http"), None, "bad port"),
    ],
)
def test_in_cluster_names_what_is_missing(
    account: Path, env: dict[str, str], remove: str | None, words: str
) -> None:
    if remove is not None:
        (account / remove).unlink()
    with pytest.raises(ConfigurationError, match=words):
        KubeConfig.in_cluster(env=env, directory=account)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://10.0.0.1",
        "http://admin:hunter2@10.0.0.1",
        "https://10.0.0.1/api",
        "https://10.0.0.1?x=1",
        "https://",
        "10.0.0.1:6443",
    ],
)
def test_a_base_url_other_than_scheme_host_and_port_is_refused(url: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        KubeConfig.explicit(url, TOKEN)
    assert "hunter2" not in str(refused.value)


def test_a_token_that_cannot_be_a_header_is_refused_without_showing_it() -> None:
    with pytest.raises(ConfigurationError) as refused:
        KubeConfig.explicit("http://127.0.0.1:1", "secret with spaces")
    assert "secret" not in str(refused.value)


# ---- TLS ----


def test_https_trusts_the_given_ca_and_only_it(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    with FakeKubeApi(tls=tls) as api:
        api.put_node("n1", None)
        trusting = KubeClient(KubeConfig.explicit(api.url, TOKEN, cert))
        assert trusting.get("/api/v1/nodes/n1")["kind"] == "Node"
        with pytest.raises(KubeError) as untrusted:
            KubeClient(KubeConfig.explicit(api.url, TOKEN)).get("/api/v1/nodes/n1")
    assert (untrusted.value.status, untrusted.value.reason) == (0, "ConnectionFailed")
    assert "certificate" in untrusted.value.message.lower()


def test_an_unusable_ca_bundle_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_text("not a certificate")
    config = KubeConfig.explicit("https://127.0.0.1:6443", TOKEN, tmp_path / "ca.crt")
    with pytest.raises(ConfigurationError, match="CA bundle"):
        KubeClient(config)
