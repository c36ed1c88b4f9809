"""A small Kubernetes API server for the tests of ``csi_oxide.kube``: plain HTTP on 127.0.0.1,
``http.server`` in a thread, so that the client's real HTTP code runs against it.

It serves exactly what the driver uses, with the API's answers:

- Leases (``/apis/coordination.k8s.io/v1/namespaces/{ns}/leases[/{name}]``): GET (404 Status
  when absent), POST (409 AlreadyExists when present), PUT (404 when absent, 409 Conflict unless
  ``metadata.resourceVersion`` is the current one); the spec's field types are checked as the API
  does (422 Invalid), MicroTimes included;
- Nodes (``/api/v1/nodes/{name}``): GET, and PATCH with ``application/json-patch+json`` and the
  operations ``test`` (422 when it fails), ``replace`` and ``remove``;
- CSINodes (``/apis/storage.k8s.io/v1/csinodes/{name}``): GET (404 when the kubelet made none);
- every request needs ``Authorization: Bearer <token>`` (401 Status otherwise).

Knobs for the tests: writes of some holders refused (503) or stalled (no answer until released),
a hook run before a write, a number of PATCHes answered 409, and a record of every request.
``RawServer`` answers every request with what a test function writes (hostile or broken servers).
"""

from __future__ import annotations

import copy
import json
import re
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOKEN = "kube-token-eyJhbGciOiJSUzI1NiJ9.c2VjcmV0LXRva2VuLWJvZHk.c2lnbmF0dXJl"
LEASE_RE = re.compile(
    r"^/apis/coordination\.k8s\.io/v1/namespaces/(?P<ns>[^/]+)/leases(?:/(?P<name>[^/]+))?$"
)
NODE_RE = re.compile(r"^/api/v1/nodes/(?P<name>[^/]+)$")
CSINODE_RE = re.compile(r"^/apis/storage\.k8s\.io/v1/csinodes/(?P<name>[^/]+)$")
MICRO_TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
JSON_PATCH = "application/json-patch+json"
POLL = 0.02  # how often a serving thread looks whether it should stop


@dataclass(frozen=True)
class Seen:
    """One request as the server saw it."""

    method: str
    path: str
    authorization: str
    content_type: str
    body: Any
    status: int = 0

    @property
    def holder(self) -> str | None:
        """The holderIdentity a Lease write carried (None for anything else)."""
        if isinstance(self.body, dict) and isinstance(self.body.get("spec"), dict):
            holder = self.body["spec"].get("holderIdentity")
            return holder if isinstance(holder, str) else ""
        return None


class Refusal(Exception):  # noqa: N818 - an answer, not a failure of the server
    """An error answer, as a Status object."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    """A ``Status`` object as the API server writes it."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


@dataclass
class FakeKubeApi:
    """The server's state and knobs; ``with FakeKubeApi() as api`` serves it."""

    token: str = TOKEN
    tls: ssl.SSLContext | None = None
    leases: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    csinodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    # Lease writes (PUT, POST) carrying one of these holders: refused with 503 / held unanswered.
    refused_holders: set[str] = field(default_factory=set)
    stalled_holders: set[str] = field(default_factory=set)
    # Called (outside the lock) before a write is applied: a concurrent writer.
    before_write: Callable[[str, str], None] | None = None
    # This many PATCHes are answered 409 Conflict before anything is applied.
    conflicting_patches: int = 0
    # Error messages repeat the request's Authorization header (a careless server).
    echo_authorization: bool = False

    def __post_init__(self) -> None:
        self._lock = threading.RLock()
        self._version = 1000
        self._unstall = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- serving ----

    def __enter__(self) -> FakeKubeApi:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.api = self
        if self.tls is not None:
            server.socket = self.tls.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, args=(POLL,), name="fake-kube-api"
        )
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.unstall()
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    @property
    def url(self) -> str:
        assert self._server is not None
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_address[1]}"

    def unstall(self) -> None:
        """Let stalled writes go on (and stall no more)."""
        self.stalled_holders.clear()
        self._unstall.set()

    # ---- state, for the tests ----

    def next_version(self) -> str:
        with self._lock:
            self._version += 1
            return str(self._version)

    def put_lease(self, namespace: str, name: str, spec: dict[str, Any]) -> None:
        """A Lease as another writer left it."""
        with self._lock:
            self.leases[(namespace, name)] = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "resourceVersion": self.next_version(),
                },
                "spec": copy.deepcopy(spec),
            }

    def lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            found = self.leases.get((namespace, name))
            return copy.deepcopy(found)

    def delete_lease(self, namespace: str, name: str) -> None:
        """Somebody deletes the Lease (``kubectl delete lease``)."""
        with self._lock:
            del self.leases[(namespace, name)]

    def label_lease(self, namespace: str, name: str, key: str, value: str) -> None:
        """Another writer changes the Lease's metadata (a new resourceVersion, the same spec)."""
        with self._lock:
            lease = self.leases[(namespace, name)]
            lease["metadata"].setdefault("labels", {})[key] = value
            lease["metadata"]["resourceVersion"] = self.next_version()

    def put_node(self, name: str, taints: list[dict[str, Any]] | None) -> None:
        with self._lock:
            spec: dict[str, Any] = {"podCIDR": "10.244.1.0/24"}
            if taints is not None:
                spec["taints"] = copy.deepcopy(taints)
            self.nodes[name] = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": name, "resourceVersion": self.next_version(), "labels": {}},
                "spec": spec,
            }

    def put_csinode(self, name: str, drivers: list[dict[str, Any]]) -> None:
        """The CSINode of Node ``name`` as its kubelet writes it, with these ``drivers``."""
        with self._lock:
            self.csinodes[name] = {
                "apiVersion": "storage.k8s.io/v1",
                "kind": "CSINode",
                "metadata": {"name": name, "resourceVersion": self.next_version()},
                "spec": {"drivers": copy.deepcopy(drivers)},
            }

    def node(self, name: str) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self.nodes[name])

    def change_node(self, name: str, change: Callable[[dict[str, Any]], None]) -> None:
        """Another writer changes the Node (a new resourceVersion)."""
        with self._lock:
            node = self.nodes[name]
            change(node)
            node["metadata"]["resourceVersion"] = self.next_version()

    def requests(self, method: str | None = None, holder: str | None = None) -> list[Seen]:
        """What was asked, of ``method`` (and, for Lease writes, by ``holder``) if given."""
        with self._lock:
            found = list(self.seen)
        return [
            s
            for s in found
            if (method is None or s.method == method) and (holder is None or s.holder == holder)
        ]

    # ---- answering ----

    def answer(
        self, method: str, path: str, authorization: str, content_type: str, raw: bytes
    ) -> tuple[int, Any]:
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        seen = Seen(method, path, authorization, content_type, body)
        try:
            code, answer = self._route(method, path, authorization, content_type, body, seen)
        except Refusal as exc:
            message = exc.message
            if self.echo_authorization:
                message += f" (request had Authorization: {authorization})"
            code, answer = exc.code, status(exc.code, exc.reason, message)
        with self._lock:
            self.seen.append(Seen(method, path, authorization, content_type, body, code))
        return code, answer

    def _route(
        self,
        method: str,
        path: str,
        authorization: str,
        content_type: str,
        body: Any,
        seen: Seen,
    ) -> tuple[int, Any]:
        if authorization != f"Bearer {self.token}":
            raise Refusal(401, "Unauthorized", "Unauthorized")
        lease = LEASE_RE.match(path)
        if lease and lease["name"] is None and method == "POST":
            return self._create_lease(lease["ns"], body, seen)
        if lease and lease["name"] is not None and method in ("GET", "PUT"):
            key = (lease["ns"], lease["name"])
            if method == "GET":
                return self._get(self.leases, key, "leases.coordination.k8s.io", lease["name"])
            return self._replace_lease(key, body, seen)
        csinode = CSINODE_RE.match(path)
        if csinode and method == "GET":
            name = csinode["name"]
            return self._get(self.csinodes, name, "csinodes.storage.k8s.io", name)
        node = NODE_RE.match(path)
        if node and method == "GET":
            return self._get(self.nodes, node["name"], "nodes", node["name"])
        if node and method == "PATCH":
            return self._patch_node(node["name"], content_type, body)
        if lease or node:
            raise Refusal(405, "MethodNotAllowed", f"the server does not allow {method} here")
        raise Refusal(404, "NotFound", "the server could not find the requested resource")

    def _get(self, table: dict[Any, Any], key: Any, kind: str, name: str) -> tuple[int, Any]:
        with self._lock:
            found = table.get(key)
            if found is None:
                raise Refusal(404, "NotFound", f'{kind} "{name}" not found')
            return 200, copy.deepcopy(found)

    def _hold(self, seen: Seen) -> None:
        """The knobs of Lease writes, and the concurrent writer's turn."""
        if seen.holder in self.refused_holders:
            raise Refusal(503, "ServiceUnavailable", "the server is currently unable to write")
        if seen.holder in self.stalled_holders:
            self._unstall.wait()
        if self.before_write is not None:
            self.before_write(seen.method, seen.path)

    def _create_lease(self, namespace: str, body: Any, seen: Seen) -> tuple[int, Any]:
        name = _lease_name(body)
        _check_lease_spec(body)
        self._hold(seen)
        with self._lock:
            if (namespace, name) in self.leases:
                raise Refusal(
                    409, "AlreadyExists", f'leases.coordination.k8s.io "{name}" already exists'
                )
            stored = copy.deepcopy(body)
            stored["metadata"].update(
                namespace=namespace, resourceVersion=self.next_version(), uid=f"uid-{name}"
            )
            self.leases[(namespace, name)] = stored
            return 201, copy.deepcopy(stored)

    def _replace_lease(self, key: tuple[str, str], body: Any, seen: Seen) -> tuple[int, Any]:
        if _lease_name(body) != key[1]:
            raise Refusal(400, "BadRequest", "the name of the object does not match the URL")
        _check_lease_spec(body)
        self._hold(seen)
        with self._lock:
            current = self.leases.get(key)
            if current is None:
                raise Refusal(404, "NotFound", f'leases.coordination.k8s.io "{key[1]}" not found')
            if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
                raise Refusal(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on leases.coordination.k8s.io "{key[1]}": the '
                    "object has been modified; please apply your changes to the latest version "
                    "and try again",
                )
            stored = copy.deepcopy(body)
            stored["metadata"]["resourceVersion"] = self.next_version()
            self.leases[key] = stored
            return 200, copy.deepcopy(stored)

    def _patch_node(self, name: str, content_type: str, body: Any) -> tuple[int, Any]:
        if content_type != JSON_PATCH:
            raise Refusal(
                415, "UnsupportedMediaType", f"the body of type {content_type!r} is unsupported"
            )
        if self.before_write is not None:
            self.before_write("PATCH", f"/api/v1/nodes/{name}")
        with self._lock:
            if self.conflicting_patches > 0:
                self.conflicting_patches -= 1
                raise Refusal(409, "Conflict", f'Operation cannot be fulfilled on nodes "{name}"')
            current = self.nodes.get(name)
            if current is None:
                raise Refusal(404, "NotFound", f'nodes "{name}" not found')
            if not isinstance(body, list):
                raise Refusal(400, "BadRequest", "a JSON patch is a list of operations")
            patched = copy.deepcopy(current)
            for op in body:
                patched = _apply(patched, op)
            if patched["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"]:
                raise Refusal(409, "Conflict", f'Operation cannot be fulfilled on nodes "{name}"')
            patched["metadata"]["resourceVersion"] = self.next_version()
            self.nodes[name] = patched
            return 200, copy.deepcopy(patched)


def _lease_name(body: Any) -> str:
    if not isinstance(body, dict) or body.get("kind") != "Lease":
        raise Refusal(400, "BadRequest", "the body is not a Lease")
    metadata = body.get("metadata")
    if not isinstance(metadata, dict) or not isinstance(metadata.get("name"), str):
        raise Refusal(422, "Invalid", "metadata.name: Required value")
    return str(metadata["name"])


def _check_lease_spec(body: dict[str, Any]) -> None:
    """The field types of a Lease's spec, as the API server decodes and validates them."""
    spec = body.get("spec", {})
    problems = []
    if not isinstance(spec, dict):
        raise Refusal(400, "BadRequest", "spec: not an object")
    if not isinstance(spec.get("holderIdentity", ""), str):
        problems.append("spec.holderIdentity: must be a string")
    for name in ("leaseDurationSeconds", "leaseTransitions"):
        value = spec.get(name, 0)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            problems.append(f"spec.{name}: must be an integer")
    if (spec.get("leaseDurationSeconds") or 0) < 0:
        problems.append("spec.leaseDurationSeconds: must be non-negative")
    for name in ("acquireTime", "renewTime"):
        value = spec.get(name)
        if value is not None and not (isinstance(value, str) and MICRO_TIME_RE.match(value)):
            problems.append(f"spec.{name}: not a MicroTime: {value!r}")
    if problems:
        raise Refusal(422, "Invalid", "; ".join(problems))


# ---- JSON patch (RFC 6902), the operations the driver sends ----


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise Refusal(422, "Invalid", f"not a JSON pointer: {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(document: Any, parts: list[str], path: str) -> tuple[Any, str]:
    target = document
    for part in parts[:-1]:
        if isinstance(target, dict) and part in target:
            target = target[part]
        elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
            target = target[int(part)]
        else:
            raise Refusal(422, "Invalid", f"the path {path!r} does not exist")
    return target, parts[-1]


def _has(container: Any, key: str) -> bool:
    if isinstance(container, dict):
        return key in container
    return isinstance(container, list) and key.isdigit() and int(key) < len(container)


def _apply(document: Any, op: Any) -> Any:
    if not isinstance(op, dict) or not isinstance(op.get("path"), str):
        raise Refusal(422, "Invalid", "an operation needs op and path")
    path = op["path"]
    container, key = _parent(document, _pointer(path), path)
    index: Any = int(key) if isinstance(container, list) else key
    kind = op.get("op")
    if kind == "test":
        if not _has(container, key) or container[index] != op.get("value"):
            raise Refusal(
                422,
                "Invalid",
                f"the server rejected our request due to an error in our request: testing value "
                f"{path} failed",
            )
    elif kind == "replace":
        if not _has(container, key) or "value" not in op:
            raise Refusal(422, "Invalid", f"replace operation does not apply: {path} is missing")
        container[index] = copy.deepcopy(op["value"])
    elif kind == "remove":
        if not _has(container, key):
            raise Refusal(422, "Invalid", f"remove operation does not apply: {path} is missing")
        del container[index]
    else:
        raise Refusal(422, "Invalid", f"unsupported operation {kind!r}")
    return document


# ---- the HTTP side ----


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    api: FakeKubeApi

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that went away (an abandoned request) is no error of the test."""


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        code, answer = self.server.api.answer(
            self.command,
            self.path,
            self.headers.get("Authorization", ""),
            self.headers.get("Content-Type", ""),
            raw,
        )
        data = json.dumps(answer).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        self.close_connection = True

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()


class RawServer:
    """Answers every request by calling ``respond`` with the handler (which writes anything it
    likes); ``seen`` holds the Authorization header of each request."""

    def __init__(self, respond: Callable[[BaseHTTPRequestHandler], None]) -> None:
        self.respond = respond
        self.seen: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                outer.seen.append(self.headers.get("Authorization", ""))
                self.close_connection = True
                outer.respond(self)

            def do_GET(self) -> None:
                self._serve()

            def do_POST(self) -> None:
                self._serve()

            def do_PUT(self) -> None:
                self._serve()

            def do_PATCH(self) -> None:
                self._serve()

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(POLL,), name="raw-server"
        )

    def __enter__(self) -> RawServer:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"


def micro_time(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
