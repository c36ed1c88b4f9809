"""The ``csi-oxide`` command line: the only place that builds concrete objects.

Subcommands: ``serve`` (the CSI daemon), ``sim`` (the simulated Oxide API), ``demo`` (the embedded
default: simulator + driver, one volume through its whole life) and ``doctor`` (set-up checks).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

import structlog

from csi_oxide import DRIVER_NAME, __version__, log
from csi_oxide.errors import ConfigurationError

DEFAULT_ENDPOINT = "unix:///csi/csi.sock"
MODES = ("controller", "node", "all")


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value else default


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="serve the CSI gRPC services on a unix socket")
    p.add_argument("--mode", choices=MODES, default="all", help="services to serve (default all)")
    p.add_argument(
        "--endpoint",
        default=DEFAULT_ENDPOINT,
        help=f"unix socket to serve on (default {DEFAULT_ENDPOINT})",
    )
    p.add_argument(
        "--node-id",
        help="Oxide instance UUID of this node (else env CSI_OXIDE_NODE_ID, else SMBIOS)",
    )
    p.add_argument(
        "--cluster-id",
        default=_env("CSI_OXIDE_CLUSTER_ID", "default"),
        help="marks the disks this cluster owns (env CSI_OXIDE_CLUSTER_ID, default 'default'); "
        "letters, digits, '.', '_', '-', at most 63 characters, checked at start",
    )
    p.add_argument("--log-format", choices=("json", "console"), default="json")
    p.add_argument("--log-level", choices=log.LEVELS, default="info")
    p.add_argument(
        "--metrics-address",
        default=_env("CSI_OXIDE_METRICS_ADDRESS"),
        help="HOST:PORT for the Prometheus endpoint (off unless set)",
    )
    p.add_argument(
        "--registration-dir",
        default=_env("CSI_OXIDE_REGISTRATION_DIR"),
        help="node: register with the kubelet by serving its plugin registration API in this "
        "folder (the kubelet's plugins_registry, mounted); off unless set",
    )
    p.add_argument(
        "--kubelet-registration-path",
        default=_env(
            "CSI_OXIDE_KUBELET_REGISTRATION_PATH",
            f"/var/lib/kubelet/plugins/{DRIVER_NAME}/csi.sock",
        ),
        help="node: the CSI socket's path on the host, told to the kubelet at registration",
    )
    p.add_argument(
        "--oxide-timeout",
        type=_seconds,
        default=_env("CSI_OXIDE_OXIDE_TIMEOUT", "600"),
        metavar="SECONDS",
        help="controller: total deadline of one Oxide API request, connect to last byte "
        "(env CSI_OXIDE_OXIDE_TIMEOUT, default 600, the slowest Oxide operation's bound)",
    )
    p.add_argument(
        "--sim-device-dir",
        default=_env("CSI_OXIDE_SIM_DEVICE_DIR"),
        help="simulator only: accept loop devices backed by files in this directory as disks",
    )
    p.add_argument(
        "--state-dir",
        default=_env("CSI_OXIDE_NODE_STATE_DIR", "/var/lib/csi-oxide/node"),
        help="node: host directory of the records of what this plugin mounted and formatted "
        "(env CSI_OXIDE_NODE_STATE_DIR, default /var/lib/csi-oxide/node); it must survive "
        "the plugin's container and node reboots",
    )
    p.set_defaults(func=_run_serve)


def _seconds(value: str) -> float:
    """A positive number of seconds (argparse type)."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < 86400:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds (0 to 86400)")
    return seconds


def _add_sim(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from csi_oxide.sim import cli as sim_cli

    p = sub.add_parser("sim", help="run the simulated Oxide API")
    sim_cli.add_arguments(p)
    p.set_defaults(func=sim_cli.run)


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="simulator + driver: one volume through its whole life")
    p.add_argument(
        "--guest",
        action="store_true",
        help="the node plugin runs in a qemu guest and attach is NVMe hot-plug (qemu, minutes)",
    )
    p.set_defaults(func=_run_demo)


def _add_doctor(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("doctor", help="check this machine's set-up for a mode")
    p.add_argument("--mode", choices=("controller", "node"), required=True)
    p.set_defaults(func=_run_doctor)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used by tests that check the deployment's flags)."""
    parser = argparse.ArgumentParser(prog="csi-oxide", description=f"CSI driver {DRIVER_NAME}")
    parser.add_argument("--version", action="version", version=f"csi-oxide {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(sub)
    _add_sim(sub)
    _add_demo(sub)
    _add_doctor(sub)
    return parser


def _run_serve(args: argparse.Namespace) -> int:
    log.configure(fmt=args.log_format, level=args.log_level)
    logger = structlog.get_logger("csi_oxide.cli")
    try:
        return asyncio.run(_serve(args))
    except ConfigurationError as exc:
        logger.error("cannot start", error=str(exc))
        print(f"csi-oxide: {exc}", file=sys.stderr)
        return 2


async def _serve(args: argparse.Namespace) -> int:
    from csi_oxide.wiring import build_server

    server, closers = await build_server(args, os.environ)
    try:
        await server.serve_until_signalled()
    finally:
        for close in closers:
            await close()
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from csi_oxide.demo import main as demo_main

    return demo_main(guest=args.guest)


def _run_doctor(args: argparse.Namespace) -> int:
    from csi_oxide import doctor

    return doctor.run(args.mode, os.environ)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``csi-oxide`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result
