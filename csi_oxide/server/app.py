"""The gRPC server: endpoint parsing, safe socket handling, start and clean shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import structlog

from csi_oxide._csi import csi_pb2_grpc as csi_grpc
from csi_oxide.errors import ConfigurationError
from csi_oxide.server.interceptor import RpcInterceptor, RpcObserver

log = structlog.get_logger("csi_oxide.server")

# The largest answer we send: ListVolumes over thousands of volumes, unpaged.
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
# The largest request accepted; gRPC answers RESOURCE_EXHAUSTED to a larger one before parsing it.
# The CSI spec ("Size Limits") caps a string at 128 bytes and a map at 4 KiB, so the largest honest
# request (a NodeStageVolume with its maps and capability) is a few tens of KiB. The former 16 MiB
# (and gRPC's default, 4 MiB) let a 1.4 MiB map of unknown parameters in, to be parsed per call.
MAX_REQUEST_BYTES = 256 * 1024
# RPCs served at once; gRPC answers RESOURCE_EXHAUSTED ("Concurrent RPC limit exceeded!") to more,
# which the sidecars and the kubelet retry with backoff. Their normal load is well below it: the
# external-provisioner's 100 workers, 10 each for the attacher, resizer and snapshotter, and a
# few Probe, GetCapacity and ListVolumes calls. A call holds its request (up to MAX_REQUEST_BYTES
# on the wire, two to three times that once parsed) and the answer it builds (a ListVolumes over
# 500 volumes: about 0.2 MiB), so a burst at the cap holds at most about 200 MiB.
DEFAULT_MAX_CONCURRENT_RPCS = 256


def parse_endpoint(endpoint: str) -> Path:
    """The socket path of a ``unix:///abs/path`` (or ``unix:/abs/path``) endpoint."""
    if endpoint.startswith("unix://"):
        path = endpoint[len("unix://") :]
    elif endpoint.startswith("unix:"):
        path = endpoint[len("unix:") :]
    else:
        raise ConfigurationError(
            f"endpoint {endpoint!r} is not supported: use unix:///absolute/path/csi.sock"
        )
    if not path.startswith("/"):
        raise ConfigurationError(f"endpoint {endpoint!r}: the socket path must be absolute")
    return Path(path)


def prepare_socket_path(path: Path) -> None:
    """Make ``path`` free for a new socket without ever deleting something that is not ours.

    A stale socket (nobody accepts on it) is removed; a live one means another plugin instance is
    serving there, and anything that is not a socket is left alone: both are configuration errors.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigurationError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)  # stale socket of a previous run
        return
    finally:
        probe.close()
    raise ConfigurationError(f"another process is already serving on {path}")


async def start_on_socket(server: grpc.aio.Server, path: Path) -> None:
    """Bind ``server`` to the unix socket ``path`` (made free by ``prepare_socket_path``), start
    it, and leave the socket to its owner and group only."""
    server.add_insecure_port(f"unix://{path}")
    await server.start()
    os.chmod(path, 0o660)


async def stop_on_socket(server: grpc.aio.Server | None, path: Path, grace: float) -> None:
    """Stop ``server`` (running calls get ``grace`` seconds) and remove its socket, if it still is
    one: never a file that something else has put there since."""
    if server is not None:
        await server.stop(grace)
    remove_socket(path)


def remove_socket(path: Path) -> None:
    """Remove ``path`` if it is a socket (a quick local call: no thread needed)."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()


# Container allocations between two young-generation collections (Python's default: 700). A
# volume's lifecycle allocates a few thousand (gRPC, HTTP, JSON, protobuf), so at 700 the
# collector ran every lifecycle or so. With this and the freeze below, its time over 1,000
# lifecycles (``make bench``'s load) fell from ~0.10 s to ~0.06 s. Cyclic garbage waits a little
# longer: at most this many young objects.
GC_YOUNG_THRESHOLD = 5000


def settle_garbage_collector() -> None:
    """Once the daemon serves: what start-up built (modules, descriptors, the servicers, about
    fifty thousand objects) lives as long as the process, so it is moved out of the collector's
    sight (``gc.freeze``) instead of being traversed again at every full collection, and the
    young generation is collected less often (``GC_YOUNG_THRESHOLD``). The daemon only: never
    in a process that imports the server for tests."""
    gc.collect()  # what start-up left as garbage goes now, not frozen with the rest
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def release_free_heap() -> bool:
    """Hand back to the system the heap pages start-up used and freed (glibc's ``malloc_trim``),
    which glibc would otherwise keep resident while the process idles. False where the C library
    has no ``malloc_trim`` (musl): nothing to do there."""
    import ctypes  # here: only the processes that trim load it

    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is None:
        return False
    trim(0)
    return True


@dataclass
class Services:
    """The servicers to register (None = not served in this mode: UNIMPLEMENTED)."""

    identity: csi_grpc.IdentityServicer
    controller: csi_grpc.ControllerServicer | None = None
    node: csi_grpc.NodeServicer | None = None
    observers: Sequence[RpcObserver] = field(default_factory=tuple)


class CsiServer:
    """A grpc.aio server on a unix socket serving the given CSI services, at most
    ``max_concurrent_rpcs`` calls at once."""

    def __init__(
        self,
        endpoint: str,
        services: Services,
        *,
        max_concurrent_rpcs: int = DEFAULT_MAX_CONCURRENT_RPCS,
    ) -> None:
        if max_concurrent_rpcs < 1:
            raise ConfigurationError(f"max_concurrent_rpcs is {max_concurrent_rpcs}: at least 1")
        self.path = parse_endpoint(endpoint)
        self._services = services
        self._max_concurrent_rpcs = max_concurrent_rpcs
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        """Bind the socket and start serving."""
        prepare_socket_path(self.path)
        server = grpc.aio.server(
            interceptors=[RpcInterceptor(list(self._services.observers))],
            options=[
                ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
                ("grpc.max_send_message_length", MAX_RESPONSE_BYTES),
            ],
            maximum_concurrent_rpcs=self._max_concurrent_rpcs,
        )
        csi_grpc.add_IdentityServicer_to_server(self._services.identity, server)
        # A service not served in this mode is not registered: gRPC answers UNIMPLEMENTED.
        if self._services.controller is not None:
            csi_grpc.add_ControllerServicer_to_server(self._services.controller, server)
        if self._services.node is not None:
            csi_grpc.add_NodeServicer_to_server(self._services.node, server)
        await start_on_socket(server, self.path)
        self._server = server
        log.info("serving", endpoint=f"unix://{self.path}")

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting calls, let running ones finish for ``grace`` s, remove the socket."""
        server, self._server = self._server, None
        await stop_on_socket(server, self.path, grace)
        log.info("stopped")

    async def serve_until_signalled(self) -> None:
        """Start, then run until SIGTERM or SIGINT, then stop cleanly."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        settle_garbage_collector()
        if self._services.controller is None:
            # The node plugin's start-up leaves about 1 MiB of freed heap; the controller's
            # leaves under 0.1 MiB, less than ctypes costs it to load (scripts/bench.py memory).
            release_free_heap()
        try:
            await stop.wait()
            log.info("signal received, shutting down")
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self.stop()
