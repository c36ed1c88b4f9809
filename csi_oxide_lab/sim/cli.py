"""``csi-oxide sim``: serve the simulated Oxide API on a loopback port.

Once the port is bound it writes ``--env-file`` atomically (shell ``export`` lines for
``OXIDE_HOST``, ``OXIDE_TOKEN``, ``OXIDE_PROJECT``, ``CSI_OXIDE_NODE_ID`` and, with loop backing,
``CSI_OXIDE_SIM_DEVICE_DIR``, and with ``--local-instances N`` above 1 also
``CSI_OXIDE_NODE_ID_<i>`` and ``CSI_OXIDE_SIM_DEVICE_DIR_<i>`` for each local instance ``i`` from
0, the unnumbered pair naming instance 0; with guest backing ``CSI_OXIDE_GUEST_NODE_ENDPOINT`` and
``CSI_OXIDE_GUEST_DIR`` instead) and prints where it listens; without ``--env-file`` it prints
those lines instead, so that the token can be pasted into a shell. SIGTERM or SIGINT stops it
cleanly: loop devices are detached, a guest is powered off, and backing files are kept only in a
``--state-dir`` the user chose.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import uvicorn

from csi_oxide_lab.sim.backing import LoopBacking
from csi_oxide_lab.sim.config import OpLatency, SimConfig, parse_op_latency
from csi_oxide_lab.sim.simulator import Simulator


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``sim`` subcommand's options."""
    parser.add_argument(
        "--listen",
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="address to serve on (default: 127.0.0.1 on a free port)",
    )
    parser.add_argument(
        "--hotplug",
        action="store_true",
        help="allow attach/detach on running instances (the anticipated platform)",
    )
    parser.add_argument(
        "--backing",
        choices=("memory", "loop", "guest"),
        default="memory",
        help="guest: the local instance is a qemu guest running the node plugin; attach is NVMe "
        "hot-plug (needs --hotplug to attach while it runs)",
    )
    parser.add_argument(
        "--state-dir", type=Path, help="loop backing: keep the backing files here (kept on exit)"
    )
    parser.add_argument("--instances", type=int, default=0, help="extra running instances")
    parser.add_argument(
        "--local-instances",
        type=_positive,
        default=1,
        metavar="N",
        help="loop backing: N instances on this machine, each seeing the disks attached to it as "
        "loop devices in a device folder of its own (default 1: the folder is <state>/devices)",
    )
    _add_behaviour(parser)
    parser.add_argument("--quota-gib", type=int, default=10240, help="silo storage quota")
    parser.add_argument("--env-file", type=Path, help="write shell export lines here once bound")


def _add_behaviour(parser: argparse.ArgumentParser) -> None:
    """How the simulated API answers: its latencies, its request log and its faults."""
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to every request")
    parser.add_argument(
        "--jitter-ms", type=float, default=0.0, help="up to this much more, at random"
    )
    parser.add_argument(
        "--op-latency-ms",
        type=_op_latency,
        default=(),
        metavar="KEY=LOW:HIGH,...",
        help="more latency per operation, drawn uniformly from LOW to HIGH ms (or KEY=MS), on "
        "top of --latency-ms; KEY is an operationId (disk_create, ...) or a class: read (every "
        "GET) or mutation (everything else); an operationId's entry beats its class's; e.g. "
        "read=20:50,mutation=300:800",
    )
    parser.add_argument(
        "--request-log",
        type=Path,
        metavar="PATH",
        help="append one JSON line per answered request: operation, path, target, status, the "
        "latency drawn, and when it arrived and was answered (time.monotonic)",
    )
    parser.add_argument(
        "--fail-rate", type=float, default=0.0, help="probability of a 503 on any request"
    )
    parser.add_argument(
        "--lost-rate",
        type=float,
        default=0.0,
        help="probability that a request is carried out but answered 503 (a lost answer)",
    )
    parser.add_argument(
        "--slow-rate",
        type=float,
        default=0.0,
        help="probability that a request is carried out but its answer trickles out slowly",
    )
    parser.add_argument(
        "--slow-byte-ms",
        type=float,
        default=200.0,
        help="with --slow-rate: milliseconds between single bytes of a slow answer",
    )


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"want a whole number of at least 1, got {value!r}")
    return int(value)


def _op_latency(value: str) -> tuple[OpLatency, ...]:
    try:
        return parse_op_latency(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as a pair; ValueError when malformed."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--listen wants HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def _config(args: argparse.Namespace) -> SimConfig:
    return SimConfig(
        hotplug=args.hotplug,
        backing=args.backing,
        state_dir=args.state_dir,
        instances=args.instances,
        local_instances=args.local_instances,
        latency_ms=args.latency_ms,
        jitter_ms=args.jitter_ms,
        op_latency=args.op_latency_ms,
        request_log=args.request_log,
        lost_rate=args.lost_rate,
        fail_rate=args.fail_rate,
        slow_rate=args.slow_rate,
        slow_byte_ms=args.slow_byte_ms,
        quota_gib=args.quota_gib,
    )


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit TCP_NODELAY: without it an answer's body waits for the
    # client's delayed ACK of its headers, adding ~40 ms to every request on a kept-alive
    # connection, a delay the real API does not have.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    if host in ("0.0.0.0", "::"):  # noqa: S104 (we only name the address we were told to use)
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def env_lines(sim: Simulator, url: str) -> str:
    """The env file's content."""
    values = {
        "OXIDE_HOST": url,
        "OXIDE_TOKEN": sim.token,
        "OXIDE_PROJECT": sim.config.project,
        "CSI_OXIDE_NODE_ID": sim.local_instance_id,
    }
    if sim.config.backing == "guest":
        from csi_oxide_lab.sim.guest_backing import GuestBacking

        assert isinstance(sim.backing, GuestBacking)
        assert sim.backing.vm is not None
        # The node plugin runs in the guest (node ID from SMBIOS); the CO reaches it here, and
        # puts staging and target paths below the folder the guest shares.
        values["CSI_OXIDE_GUEST_NODE_ENDPOINT"] = f"unix://{sim.backing.vm.node_socket}"
        values["CSI_OXIDE_GUEST_DIR"] = str(sim.backing.guest_dir)
    elif isinstance(sim.backing, LoopBacking):
        values.update(_local_instances(sim, sim.backing))
    return "".join(f"export {k}={_single_quoted(v)}\n" for k, v in values.items())


def _local_instances(sim: Simulator, backing: LoopBacking) -> dict[str, str]:
    """Each local instance's ID and device folder (numbered when there are several)."""
    values = {"CSI_OXIDE_SIM_DEVICE_DIR": str(backing.local_dirs[0])}
    if len(sim.local_instance_ids) > 1:
        for i, (instance, folder) in enumerate(
            zip(sim.local_instance_ids, backing.local_dirs, strict=True)
        ):
            values[f"CSI_OXIDE_NODE_ID_{i}"] = instance
            values[f"CSI_OXIDE_SIM_DEVICE_DIR_{i}"] = str(folder)
    return values


def _single_quoted(value: str) -> str:
    """``value`` in POSIX shell single quotes (always quoted, unlike ``shlex.quote``)."""
    return "'" + value.replace("'", "'\"'\"'") + "'"


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (mode 0600: a token)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def _quiet_signals() -> Iterator[None]:
    """Make SIGTERM and SIGINT harmless once uvicorn hands them back after its graceful stop,
    so the backing is still released."""

    def ignore(signum: int, frame: FrameType | None) -> None:
        return None

    previous = {sig: signal.signal(sig, ignore) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


async def _serve(sim: Simulator, sock: socket.socket, env_file: Path | None) -> None:
    config = uvicorn.Config(
        sim.asgi_app(), http="h11", lifespan="off", log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    # The socket already listens: connections made from now on wait in its backlog until
    # uvicorn accepts them, so the address can be published before serving starts.
    url = _url(sock)
    if env_file is not None:
        write_atomically(env_file, env_lines(sim, url))
    print(f"csi-oxide sim: serving the simulated Oxide API on {url}", flush=True)
    if env_file is None:  # the only place the token shows: paste these lines into a shell
        print(env_lines(sim, url), end="", flush=True)
    await server.serve(sockets=[sock])


def _print_guest_timings(sim: Simulator) -> None:
    from csi_oxide_lab.sim.guest_backing import GuestBacking

    if isinstance(sim.backing, GuestBacking) and sim.backing.vm is not None:
        timings = ", ".join(f"{k} {v:.1f}" for k, v in sim.backing.vm.timings.items())
        print(f"csi-oxide sim: guest {sim.local_instance_id} booted ({timings})", flush=True)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT; 0 on a clean stop, 2 on bad arguments."""
    try:
        host, port = parse_listen(args.listen)
        config = _config(args)
        sock = _bind(host, port)
    except (ValueError, OSError) as exc:
        print(f"csi-oxide sim: {exc}", file=sys.stderr)
        return 2
    try:
        sim = Simulator(config)
    except (OSError, RuntimeError) as exc:  # the guest did not boot: say why, leave nothing
        sock.close()
        print(f"csi-oxide sim: {exc}", file=sys.stderr)
        return 1
    _print_guest_timings(sim)
    try:
        with _quiet_signals():
            asyncio.run(_serve(sim, sock, args.env_file))
    finally:
        sim.close()
        sock.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the simulator alone (``python -m csi_oxide_lab.sim.cli``)."""
    parser = argparse.ArgumentParser(prog="csi-oxide sim", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
