"""A small, blocking client of qemu's machine protocol (QMP) over a unix socket.

One command at a time; events that arrive meanwhile are kept until ``wait_event`` takes them.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import Any

JsonObject = dict[str, Any]


class QmpError(RuntimeError):
    """QMP answered an error, closed the connection, or did not answer in time."""


class QmpClient:
    """A connected, negotiated QMP session (``connect`` makes one)."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self._sock = sock
        self._timeout = timeout
        self._buffer = b""
        self.events: list[JsonObject] = []

    @classmethod
    def connect(cls, path: str, *, timeout: float = 30.0) -> QmpClient:
        """Connect to qemu's ``-qmp unix:PATH,server=on`` socket and leave negotiation mode."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as exc:
            sock.close()
            raise QmpError(f"cannot connect to QMP socket {path}: {exc}") from exc
        client = cls(sock, timeout)
        greeting = client._read_message(time.monotonic() + timeout)
        if "QMP" not in greeting:
            client.close()
            raise QmpError(f"not a QMP greeting: {greeting!r}")
        client.execute("qmp_capabilities")
        return client

    def close(self) -> None:
        """Close the connection (qemu keeps running)."""
        self._sock.close()

    def execute(self, command: str, arguments: JsonObject | None = None) -> Any:
        """Run ``command``; its ``return`` value, or QmpError with qemu's error description."""
        message: JsonObject = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        try:
            self._sock.sendall(json.dumps(message).encode() + b"\n")
        except OSError as exc:
            raise QmpError(f"QMP {command}: {exc}") from exc
        deadline = time.monotonic() + self._timeout
        while True:
            reply = self._read_message(deadline)
            if "event" in reply:
                self.events.append(reply)
                continue
            if "error" in reply:
                error = reply["error"]
                raise QmpError(f"QMP {command}: {error.get('class')}: {error.get('desc')}")
            return reply.get("return")

    def wait_event(
        self, name: str, match: Callable[[JsonObject], bool], timeout: float
    ) -> JsonObject:
        """The first event called ``name`` whose ``data`` satisfies ``match`` (kept ones first)."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event.get("event") == name and match(event.get("data", {})):
                    self.events.remove(event)
                    return event
            message = self._read_message(deadline)
            if "event" in message:
                self.events.append(message)

    def _read_message(self, deadline: float) -> JsonObject:
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise QmpError("QMP: no answer in time")
            self._sock.settimeout(left)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError as exc:
                raise QmpError("QMP: no answer in time") from exc
            except OSError as exc:
                raise QmpError(f"QMP: {exc}") from exc
            if not chunk:
                raise QmpError("QMP: qemu closed the connection")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        message = json.loads(line)
        if not isinstance(message, dict):
            raise QmpError(f"QMP: unexpected message {line!r}")
        return message
