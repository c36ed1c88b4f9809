"""The ``csi-oxide`` command line: the only place that builds concrete objects.

Subcommands: ``serve`` (the CSI daemon), ``sim`` (the simulated Oxide API), ``demo`` (the embedded
default: simulator + driver, one volume through its whole life), ``doctor`` (set-up checks) and
``static-pv`` (the PersistentVolume for a disk an operator attached to a node).

The module itself imports only the standard library's argument parsing: asyncio, structlog and
gRPC load once a command is chosen, so that ``serve --mode node`` can first refuse what the node
plugin never uses (``_without_tls``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from csi_oxide import DRIVER_NAME, LOG_LEVELS, RECONCILER_LEASE, __version__
from csi_oxide.errors import ConfigurationError

DEFAULT_ENDPOINT = "unix:///csi/csi.sock"
# server.app.DEFAULT_MAX_CONCURRENT_RPCS (why this number: there), kept here so that the command
# line does not import gRPC.
DEFAULT_MAX_CONCURRENT_RPCS = 256
MODES = ("controller", "node", "all")
SERVE_EPILOG = (
    "The controller finds its Oxide credentials as Oxide's CLI and SDKs do: OXIDE_HOST and "
    "OXIDE_TOKEN, or a profile (OXIDE_PROFILE, else default-profile) in "
    "~/.config/oxide/credentials.toml; OXIDE_PROJECT names the project its disks live in; "
    "CSI_OXIDE_CA_FILE, a CA bundle to trust. The node plugin needs none of them. "
    "`csi-oxide doctor --mode controller|node` checks a set-up."
)


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value else default


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the CSI gRPC services on a unix socket",
        description="Serve the CSI Identity, Controller and Node services on a unix socket.",
        epilog=SERVE_EPILOG,
    )
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
    p.add_argument(
        "--log-format",
        choices=("json", "console"),
        default="json",
        help="json: one object per line, for log collectors (default); console: for people",
    )
    p.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default="info",
        help="the least severe level logged (default info; debug adds a line per Oxide request)",
    )
    _add_serve_endpoints(p)
    _add_serve_controller(p)
    _add_serve_node(p)
    p.set_defaults(func=_run_serve)


def _add_serve_endpoints(p: argparse.ArgumentParser) -> None:
    """What the kubelet and Prometheus reach: the metrics endpoint and the registration."""
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


def _add_serve_controller(p: argparse.ArgumentParser) -> None:
    """The controller's: the Oxide API's deadline and the reconciler's Lease."""
    p.add_argument(
        "--oxide-timeout",
        type=_seconds,
        default=_env("CSI_OXIDE_OXIDE_TIMEOUT", "600"),
        metavar="SECONDS",
        help="controller: total deadline of one Oxide API request, connect to last byte "
        "(env CSI_OXIDE_OXIDE_TIMEOUT, default 600, the slowest Oxide operation's bound)",
    )
    p.add_argument(
        "--leader-election",
        action=argparse.BooleanOptionalAction,
        default=_env("CSI_OXIDE_LEADER_ELECTION", "") == "true",
        help="controller: run the background reconciler only in the replica holding the Lease "
        f"{RECONCILER_LEASE!r} (in-cluster Kubernetes API; env CSI_OXIDE_LEADER_ELECTION=true); "
        "off: every replica runs it (one replica, or outside Kubernetes)",
    )
    p.add_argument(
        "--leader-election-namespace",
        default=_env("CSI_OXIDE_LEADER_ELECTION_NAMESPACE"),
        help="controller: the Lease's namespace (default: the pod's own)",
    )
    p.add_argument(
        "--leader-election-lease-duration",
        type=_seconds,
        default=15.0,
        metavar="SECONDS",
        help="controller: how long a Lease holds without renewal (default 15, as the sidecars)",
    )
    p.add_argument(
        "--leader-election-renew-deadline",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="controller: the leader stops leading when it could not renew for this long "
        "(default 10)",
    )
    p.add_argument(
        "--leader-election-retry-period",
        type=_seconds,
        default=2.0,
        metavar="SECONDS",
        help="controller: the pause between attempts to acquire or renew (default 2)",
    )


def _add_serve_node(p: argparse.ArgumentParser) -> None:
    """The node plugin's, and the RPC bound both serve under."""
    p.add_argument(
        "--startup-taint",
        action=argparse.BooleanOptionalAction,
        default=_env("CSI_OXIDE_STARTUP_TAINT", "") == "true",
        help="node: lift the taint csi.oxide.computer/agent-not-ready from this node (env "
        "NODE_NAME) once the plugin answers Probe and the kubelet registered it (in-cluster "
        "Kubernetes API; env CSI_OXIDE_STARTUP_TAINT=true); off by default",
    )
    p.add_argument(
        "--max-concurrent-rpcs",
        type=_positive,
        default=_env("CSI_OXIDE_MAX_CONCURRENT_RPCS", str(DEFAULT_MAX_CONCURRENT_RPCS)),
        metavar="N",
        help="CSI calls served at once; more are answered RESOURCE_EXHAUSTED, and the sidecars "
        "retry them (env CSI_OXIDE_MAX_CONCURRENT_RPCS, default "
        f"{DEFAULT_MAX_CONCURRENT_RPCS}, about twice the sidecars' busiest load)",
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


def _seconds(value: str) -> float:
    """A positive number of seconds (argparse type)."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < 86400:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds (0 to 86400)")
    return seconds


def _positive(value: str) -> int:
    """A whole number from 1 to 100,000 (argparse type)."""
    if not value.isdigit() or not 1 <= int(value) <= 100_000:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number from 1 to 100000")
    return int(value)


def _add_sim(sub: argparse._SubParsersAction[argparse.ArgumentParser], *, options: bool) -> None:
    p = sub.add_parser("sim", help="run the simulated Oxide API")
    if options:  # the simulator and its web stack are imported to define them
        from csi_oxide_lab.sim import cli as sim_cli

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
    p.add_argument(
        "--mode",
        choices=("controller", "node"),
        required=True,
        help="controller: credentials, the API, the project and quota; node: root, the "
        "filesystem tools, device events, the node ID and the kubelet folder",
    )
    p.set_defaults(func=_run_doctor)


def _add_static_pv(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "static-pv",
        help="print the PersistentVolume for a disk attached to a node (today's racks)",
        description="Print, for kubectl apply -f -, a PersistentVolume naming an Oxide disk "
        "that is attached to an instance, pinned to that instance's Kubernetes node. On racks "
        "without disk hot-plug this is how a running node uses a disk (attached while the "
        "instance was stopped). Needs the controller's credentials: OXIDE_HOST + OXIDE_TOKEN "
        "(or OXIDE_PROFILE) and OXIDE_PROJECT.",
    )
    p.add_argument("disk", help="the Oxide disk's name")
    p.add_argument(
        "--node-name",
        help="the Kubernetes node name of the disk's instance (default: the instance's name, "
        "as Oxide's cloud controller manager names nodes)",
    )
    p.add_argument("--fs-type", default="ext4", help="ext4 (default), ext3 or xfs")
    p.add_argument("--pv-name", help="the PersistentVolume's name (default oxide-DISK)")
    p.set_defaults(func=_run_static_pv)


def build_parser(*, sim_options: bool = True) -> argparse.ArgumentParser:
    """The full argument parser (also used by tests that check the deployment's flags).

    Without ``sim_options`` the ``sim`` command is listed but has no options: defining them
    imports the simulator (uvicorn, starlette), which a daemon must not load for nothing.
    """
    parser = argparse.ArgumentParser(prog="csi-oxide", description=f"CSI driver {DRIVER_NAME}")
    parser.add_argument("--version", action="version", version=f"csi-oxide {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(sub)
    _add_sim(sub, options=sim_options)
    _add_demo(sub)
    _add_doctor(sub)
    _add_static_pv(sub)
    return parser


def _without_tls() -> None:
    """Refuse Python's TLS module in this process. The node plugin makes no TLS connection: it
    holds no Oxide credentials, and only its optional startup taint talks to the Kubernetes API.
    asyncio, gRPC and structlog import ``ssl`` anyway (OpenSSL's bindings: about 4.4 MiB of an
    idle node plugin's resident memory); refused before they load, each goes on without it."""
    if "ssl" not in sys.modules:
        sys.modules["ssl"] = None  # type: ignore[assignment]  # "import ssl" raises ImportError


def _run_serve(args: argparse.Namespace) -> int:
    if args.mode == "node" and not args.startup_taint:
        _without_tls()
    import asyncio

    import structlog

    from csi_oxide.daemon import log

    log.configure(fmt=args.log_format, level=args.log_level, final=True)
    logger = structlog.get_logger("csi_oxide.cli")
    try:
        return asyncio.run(_serve(args))
    except ConfigurationError as exc:
        logger.error("cannot start", error=str(exc))
        print(f"csi-oxide: cannot start: {exc}", file=sys.stderr)
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
    from csi_oxide_lab.demo import main as demo_main

    return demo_main(guest=args.guest)


def _run_doctor(args: argparse.Namespace) -> int:
    from csi_oxide.commands import doctor

    return doctor.run(args.mode, os.environ)


def _run_static_pv(args: argparse.Namespace) -> int:
    import asyncio

    from csi_oxide.daemon import log
    from csi_oxide.errors import CsiOxideError

    log.configure(fmt="console", level="error")  # stdout carries the manifest alone
    try:
        print(asyncio.run(_static_pv(args)), end="")
    except CsiOxideError as exc:
        print(f"csi-oxide static-pv: {exc}", file=sys.stderr)
        return 2
    return 0


async def _static_pv(args: argparse.Namespace) -> str:
    from csi_oxide.commands import staticpv
    from csi_oxide.commands.doctor import first_contact_client
    from csi_oxide.oxide.credentials import load_credentials
    from csi_oxide.oxide.errors import OxideError

    api = first_contact_client(load_credentials(os.environ))
    try:
        attached = await staticpv.describe(api, args.disk)
    except OxideError as exc:
        raise ConfigurationError(f"the Oxide API: {exc}") from exc
    finally:
        await api.aclose()
    return staticpv.manifest(
        attached,
        node_name=args.node_name or attached.instance.name,
        fs_type=args.fs_type,
        pv_name=args.pv_name,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``csi-oxide`` command."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # Without "sim" among the arguments, sim cannot be the command.
    parser = build_parser(sim_options="sim" in argv)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result
