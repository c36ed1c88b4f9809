"""``csi-oxide doctor``: the set-up mistakes an operator makes, checked one by one.

Controller: credentials found, the API reachable with them, the project there, quota left.
Node: root, the filesystem tools, the kernel's device events, the instance UUID, the kubelet
directory. Each check yields one row; the command prints them as a table and exits 1 if any failed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from csi_oxide.contract.nodeid import SMBIOS_UUID, resolve_node_id
from csi_oxide.daemon.log import configure as configure_logging
from csi_oxide.errors import CsiOxideError
from csi_oxide.host import tools
from csi_oxide.oxide.api import OxideApi
from csi_oxide.oxide.client import HttpOxideClient, RetryPolicy
from csi_oxide.oxide.credentials import OxideCredentials, load_credentials
from csi_oxide.oxide.types import GIB

# Every program csi_oxide.node runs (tests/commands/test_doctor.py holds the list to the node's
# code).
NODE_TOOLS = (
    "blkid",
    "mount",
    "umount",
    "losetup",  # read-only raw block publishes (csi_oxide.node.views)
    "mkfs.ext4",
    "mkfs.ext3",
    "dumpe2fs",
    "e2fsck",
    "resize2fs",
    "mkfs.xfs",
    "xfs_db",
    "xfs_growfs",
    "setpriv",  # kills a running tool with the plugin (csi_oxide.node.exec)
)
KUBELET_DIR = Path("/var/lib/kubelet")


@dataclass(frozen=True, slots=True)
class Check:
    """One row of the report."""

    name: str
    ok: bool
    detail: str


def _open_uevent_socket() -> str:
    import pyudev

    context = pyudev.Context()
    monitor = pyudev.Monitor.from_netlink(context, source="kernel")
    monitor.filter_by("block")
    monitor.start()
    disks = sum(1 for _ in context.list_devices(subsystem="block", DEVTYPE="disk"))
    return f"kernel uevents readable; {disks} block disks in sysfs"


@dataclass
class NodeHost:
    """What the node checks look at; tests substitute their own."""

    env: Mapping[str, str]
    euid: Callable[[], int] = os.geteuid
    which: Callable[[str], str | None] = tools.find
    kubelet_dir: Path = KUBELET_DIR
    smbios_path: Path = SMBIOS_UUID
    netlink: Callable[[], str] = _open_uevent_socket


def node_checks(host: NodeHost) -> list[Check]:
    """The node plugin's prerequisites on this machine."""
    checks = [
        Check("running as root", host.euid() == 0, f"effective uid {host.euid()}"),
    ]
    missing = [tool for tool in NODE_TOOLS if host.which(tool) is None]
    checks.append(
        Check(
            "filesystem tools",
            not missing,
            "missing: " + ", ".join(missing) if missing else "all of " + ", ".join(NODE_TOOLS),
        )
    )
    checks.append(_guarded("device events (udev)", host.netlink))
    checks.append(
        _guarded(
            "instance UUID (node ID)",
            lambda: resolve_node_id(None, host.env, smbios_path=host.smbios_path),
        )
    )
    present = host.kubelet_dir.is_dir()
    checks.append(
        Check(
            "kubelet directory",
            present,
            f"{host.kubelet_dir} {'present' if present else 'missing'}",
        )
    )
    return checks


def _guarded(name: str, probe: Callable[[], str]) -> Check:
    try:
        return Check(name, True, probe())
    except (CsiOxideError, OSError, ImportError) as exc:
        return Check(name, False, str(exc) or type(exc).__name__)


ClientFactory = Callable[[OxideCredentials], OxideApi]

# First contact: a refused connection or an unknown host name is a wrong address, said at once
# (the daemon, by contrast, keeps retrying an API that is briefly away); 503s get a short while.
DOCTOR_RETRY = RetryPolicy(max_elapsed=15.0, retry_unreachable=False)
DOCTOR_TIMEOUT = 60.0


def first_contact_client(credentials: OxideCredentials) -> OxideApi:
    """The doctor's client: one attempt at an unreachable or mis-schemed API, a short deadline."""
    return HttpOxideClient.from_credentials(credentials, retry=DOCTOR_RETRY, timeout=DOCTOR_TIMEOUT)


async def controller_checks(
    env: Mapping[str, str], *, client_factory: ClientFactory = first_contact_client
) -> list[Check]:
    """The controller's prerequisites: credentials, API, project, quota."""
    try:
        creds = load_credentials(env)
    except CsiOxideError as exc:
        return [Check("Oxide credentials", False, str(exc))]
    checks = [Check("Oxide credentials", True, str(creds))]
    if creds.warnings:
        checks.append(Check("credentials file private", False, "; ".join(creds.warnings)))
    api = client_factory(creds)
    try:
        checks.extend(await _api_checks(api, creds.project))
    finally:
        await api.aclose()
    return checks


async def _api_checks(api: OxideApi, project: str) -> list[Check]:
    try:
        disks = await api.disk_list()
    except CsiOxideError as exc:
        return [Check("API reachable, token valid, project exists", False, str(exc))]
    checks = [
        Check(
            "API reachable, token valid, project exists",
            True,
            f"project {project!r}: {len(disks)} disks",
        )
    ]
    try:
        free = (await api.utilization_view()).free_storage
    except CsiOxideError as exc:
        return [*checks, Check("silo storage quota", False, str(exc))]
    checks.append(
        Check("silo storage quota", free >= GIB, f"{free / GIB:.1f} GiB free for new disks")
    )
    return checks


def render(checks: Sequence[Check]) -> str:
    """A plain-text table: status, check, detail."""
    width = max(len(c.name) for c in checks)
    lines = [f"{'':4}  {'check':<{width}}  detail"]
    for c in checks:
        lines.append(f"{'ok' if c.ok else 'FAIL':<4}  {c.name:<{width}}  {c.detail}")
    return "\n".join(lines)


def run(
    mode: str,
    env: Mapping[str, str],
    *,
    client_factory: ClientFactory = first_contact_client,
) -> int:
    """Run the checks of ``mode``, print the table, return the exit code.

    A doctor's output is its table: meanwhile only errors are logged (to stderr), so neither the
    client's per-request lines nor its warning on giving up (the table's row says why) end up
    above it."""
    configure_logging(fmt="console", level="error")
    if mode == "controller":
        checks = asyncio.run(controller_checks(env, client_factory=client_factory))
    else:
        checks = node_checks(NodeHost(env=env))
    print(render(checks))
    failed = sum(not c.ok for c in checks)
    print(f"{len(checks) - failed} passed, {failed} failed")
    return 1 if failed else 0
