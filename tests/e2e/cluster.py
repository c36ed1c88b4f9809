"""A one- or two-node Kubernetes cluster on this machine, for the end-to-end tests (root only).

etcd (Debian), kube-apiserver, kube-controller-manager, kube-scheduler and one kubelet per node
(built from the Go module, scripts/cluster/build_tools.py), containerd + runc (Debian), one
containerd per node: a kubelet removes every container it does not know, so two kubelets cannot
share one. Everything listens on 127.0.0.0/8 or on unix sockets in a temporary state folder; every
process is started and stopped by its PID; nothing is pulled (containerd's proxy is a closed
loopback port). The kubelets register with this machine's own non-loopback address (a kubelet
refuses a loopback node IP); nothing is ever sent to it. Each kubelet serves on a loopback address
of its own (127.0.0.1, 127.0.0.2) with its own self-signed serving certificate, and its node is
named so that its Hostname address is that loopback address (``localhost``; ``127.0.0.2``): the
API server, told to prefer Hostname addresses, reaches each kubelet there for `kubectl
exec`/`logs` (authenticated by a client certificate of the cluster's CA, which the kubelets
trust). The second node has its own folders (``<state>/node-b``: kubelet root, containerd, CNI
configuration, pod logs), kubelet token, ports and cgroup root (``/csi-oxide-e2e-b``, made here
in every hierarchy), so its pods never mix with the first node's ``/kubepods``.

`Cluster.stop()` leaves no process, mount, cgroup, loop device or file behind, also after a
failure half-way through `start()`. A run killed before it could stop (SIGKILL) is cleaned up by
the next `start()`, from the ledger each run keeps under /run (tests/e2e/leftovers.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e.leftovers import (
    CGROUP_ROOT,
    CONTAINER_LOG_LINKS,
    Ledger,
    kill_cgroups,
    mounts_below,
    processes_naming,
    sweep,
    unmount_below,
)

ROOT = Path(__file__).resolve().parents[2]
TOOLS_DIR = ROOT / ".tools" / "cluster"
HERE = Path(__file__).resolve().parent
# A node's name is also its Hostname address, which the API server dials for exec/logs: it must
# resolve to the loopback address its kubelet serves on (the registered InternalIP is never
# contacted). The first node is ``localhost`` (127.0.0.1); a second is named by its address.
NODE_NAME = "localhost"
SECOND_NODE_ADDRESS = "127.0.0.2"
SERVICE_RANGE = "127.100.0.0/16"
# Two nodes: a kubelet's lease lasts 20 s and is renewed every 5 s; the node-lifecycle
# controller's grace period is 20 s.
LEASE_SECONDS = 20
# containerd's proxy: any pull fails at once, locally.
CLOSED_PORT = "http://127.0.0.1:9"
# containerd's shims put their sockets in /run/containerd/s whatever the config says.
SHIM_RUN_DIR = Path("/run/containerd")
# The kubelet's device manager uses this fixed path whatever its --root-dir...
DEVICE_PLUGINS = Path("/var/lib/kubelet/device-plugins")
# ... and links every container's log here, whatever its podLogsDir (CONTAINER_LOG_LINKS).


@dataclass(frozen=True)
class Node:
    """One kubelet with its own containerd, folders, cgroup root, ports and loopback address.

    The first node keeps the one-node layout (folders directly in the state folder, pods in the
    ``kubepods`` cgroup); the second works in ``<state>/node-b`` with its pods below the cgroup
    ``csi-oxide-e2e-b``, which this module makes in every hierarchy."""

    name: str
    address: str
    tag: str  # "" for the first node, "-b" for the second: in process and folder names
    home: Path
    cgroup_root: str  # "" (the kubelet's default "/") or a cgroup of its own

    @property
    def kubelet_dir(self) -> Path:
        return self.home / "kubelet"

    @property
    def containerd_dir(self) -> Path:
        return self.home / "containerd"

    @property
    def containerd_sock(self) -> Path:
        return self.containerd_dir / "containerd.sock"

    @property
    def pod_logs(self) -> Path:
        return self.home / "pod-logs"

    @property
    def kubeconfig(self) -> Path:
        return self.home / "kubelet.kubeconfig"

    @property
    def pods_cgroup(self) -> str:
        """Where its pods' cgroups live, below each hierarchy's root."""
        return f"{self.cgroup_root}/kubepods" if self.cgroup_root else "kubepods"


def make_nodes(state: Path, count: int) -> list[Node]:
    if count not in (1, 2):
        raise ValueError(f"the cluster has one or two nodes, not {count}")
    nodes = [Node(NODE_NAME, "127.0.0.1", "", state, "")]
    if count == 2:
        nodes.append(
            Node(
                SECOND_NODE_ADDRESS, SECOND_NODE_ADDRESS, "-b", state / "node-b", "csi-oxide-e2e-b"
            )
        )
    return nodes


def log(msg: str) -> None:
    print(f"[cluster] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def node_address() -> str:
    """This machine's first global IPv4 address (the kubelet refuses a loopback node IP)."""
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "scope", "global"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    for line in out.splitlines():
        parts = line.split()
        if "inet" in parts:
            return parts[parts.index("inet") + 1].split("/")[0]
    raise RuntimeError("no global IPv4 address on this machine: the kubelet needs one to register")


def wait_for(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path


@dataclass
class Tools:
    paths: dict[str, Path]

    @classmethod
    def build(cls) -> Tools:
        """Build (or find cached) every binary; print what build_tools prints."""
        script = ROOT / "scripts" / "cluster" / "build_tools.py"
        subprocess.run([sys.executable, script, "--jobs", "2"], check=True)
        listed = subprocess.run(
            [sys.executable, script, "--list"], check=True, capture_output=True, text=True
        ).stdout
        paths = {}
        for line in listed.splitlines():
            name, _, path = line.partition("=")
            paths[name] = Path(path)
        crd = subprocess.run(
            [sys.executable, script, "--crd-dir"], check=True, capture_output=True, text=True
        ).stdout.strip()
        paths["snapshot-crds"] = Path(crd)
        return cls(paths)

    def __getitem__(self, name: str) -> Path:
        return self.paths[name]


@dataclass
class Cluster:
    tools: Tools
    node_count: int = 1
    state: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="csi-oxide-e2e-")))
    procs: list[Proc] = field(default_factory=list)
    admin_token: str = field(default_factory=lambda: secrets.token_hex(16))
    etcd_port: int = 0
    api_port: int = 0
    node_ip: str = ""
    made_run_dir: bool = False
    made_host_dirs: list[Path] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    ledger: Ledger = field(default_factory=Ledger.for_this_process)

    def __post_init__(self) -> None:
        self.nodes = make_nodes(self.state, self.node_count)

    # ---- paths (of the first node, where one is meant) -----------------------------------------
    @property
    def kubeconfig(self) -> Path:
        return self.state / "admin.kubeconfig"

    @property
    def kubelet_dir(self) -> Path:
        return self.nodes[0].kubelet_dir

    @property
    def containerd_sock(self) -> Path:
        return self.nodes[0].containerd_sock

    @property
    def pod_logs(self) -> Path:
        return self.nodes[0].pod_logs

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    @property
    def kubectl_path(self) -> Path:
        return self.tools["kubectl"]

    # ---- kubectl -----------------------------------------------------------------------------
    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(self.kubectl_path), f"--kubeconfig={self.kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {done.stderr.strip()}")
        return done

    def get(self, *args: str) -> Any:
        """``kubectl get ... -o json`` parsed (None when not found)."""
        done = self.kubectl("get", *args, "-o", "json", check=False)
        if done.returncode != 0:
            if "NotFound" in done.stderr or "not found" in done.stderr:
                return None
            raise RuntimeError(f"kubectl get {' '.join(args)} failed: {done.stderr.strip()}")
        return json.loads(done.stdout)

    def apply(self, objects: Sequence[dict[str, Any]] | str) -> None:
        text = (
            objects
            if isinstance(objects, str)
            else json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})
        )
        self.kubectl("apply", "-f", "-", stdin=text)

    # ---- processes ---------------------------------------------------------------------------
    def _spawn(
        self, name: str, argv: Sequence[str | Path], env: dict[str, str] | None = None
    ) -> Proc:
        log_path = self.state / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as out:
            popen = subprocess.Popen(
                [str(a) for a in argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        self.ledger.record_pid(name, popen.pid)
        return proc

    def _alive(self, proc: Proc) -> None:
        if proc.popen.poll() is not None:
            tail = proc.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{tail}")

    def _wait_ready(self, proc: Proc, what: str, check: Callable[[], bool], timeout: float) -> None:
        def ok() -> bool:
            self._alive(proc)
            return check()

        wait_for(what, ok, timeout)

    # ---- bring-up ----------------------------------------------------------------------------
    def start(self, before_kubelet: Callable[[Cluster], None] | None = None) -> None:
        """Bring everything up; ``before_kubelet`` runs once every node's containerd serves
        (image imports). First, whatever a killed earlier run left is swept away."""
        started = time.monotonic()
        sweep(log=log)
        self.ledger.record_dir(self.state)
        self.state.chmod(0o755)
        self.node_ip = node_address()
        self._pki()
        self._etcd()
        self._apiserver()
        self._controller_manager()
        self._scheduler()
        for node in self.nodes:
            self._containerd(node)
        if before_kubelet is not None:
            before_kubelet(self)
        for node in self.nodes:
            self._kubelet(node)
        for node in self.nodes:
            self._wait_node_ready(node)
        log(
            f"cluster of {len(self.nodes)} node(s) up in {time.monotonic() - started:.1f} s "
            f"(state {self.state})"
        )

    def _openssl(self, *args: str | Path) -> None:
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)

    def _pki(self) -> None:
        pki = self.state / "pki"
        pki.mkdir()
        self._openssl("genrsa", "-out", pki / "sa.key", "2048")
        self._openssl("rsa", "-in", pki / "sa.key", "-pubout", "-out", pki / "sa.pub")
        self._openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", pki / "ca.key", "-out", pki / "ca.crt", "-subj", "/CN=csi-oxide-e2e-ca",
        )  # fmt: skip
        ext = pki / "san.ext"
        ext.write_text(
            "subjectAltName=IP:127.0.0.1,IP:127.100.0.1,DNS:localhost,DNS:kubernetes,"
            "DNS:kubernetes.default,DNS:kubernetes.default.svc\n"
            "extendedKeyUsage=serverAuth\n"
        )
        self._openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", pki / "apiserver.key",
            "-out", pki / "apiserver.csr", "-subj", "/CN=kube-apiserver",
        )  # fmt: skip
        self._openssl(
            "x509", "-req", "-in", pki / "apiserver.csr", "-CA", pki / "ca.crt",
            "-CAkey", pki / "ca.key", "-CAcreateserial", "-days", "2",
            "-out", pki / "apiserver.crt", "-extfile", ext,
        )  # fmt: skip
        # The API server's client certificate towards the kubelet (exec, logs, port-forward).
        client_ext = pki / "client.ext"
        client_ext.write_text("extendedKeyUsage=clientAuth\n")
        self._openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", pki / "kubelet-client.key",
            "-out", pki / "kubelet-client.csr",
            "-subj", "/O=system:masters/CN=kube-apiserver-kubelet-client",
        )  # fmt: skip
        self._openssl(
            "x509", "-req", "-in", pki / "kubelet-client.csr", "-CA", pki / "ca.crt",
            "-CAkey", pki / "ca.key", "-CAcreateserial", "-days", "2",
            "-out", pki / "kubelet-client.crt", "-extfile", client_ext,
        )  # fmt: skip
        tokens = {node.kubeconfig: secrets.token_hex(16) for node in self.nodes}
        (pki / "tokens.csv").write_text(
            f'{self.admin_token},admin,admin,"system:masters"\n'
            + "".join(
                f'{tokens[n.kubeconfig]},system:node:{n.name},kubelet{n.tag},"system:nodes"\n'
                for n in self.nodes
            )
        )
        self.api_port = free_port()
        for path, token in ((self.kubeconfig, self.admin_token), *tokens.items()):
            config = {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "e2e",
                        "cluster": {
                            "server": f"https://127.0.0.1:{self.api_port}",
                            "certificate-authority": str(pki / "ca.crt"),
                        },
                    }
                ],
                "users": [{"name": "e2e", "user": {"token": token}}],
                "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "e2e"}}],
                "current-context": "e2e",
            }
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(config))
            path.chmod(0o600)

    def _etcd(self) -> None:
        self.etcd_port = free_port()
        peer = free_port()
        url = f"http://127.0.0.1:{self.etcd_port}"
        proc = self._spawn(
            "etcd",
            [
                "etcd",
                "--name=e2e",
                f"--data-dir={self.state / 'etcd'}",
                f"--listen-client-urls={url}",
                f"--advertise-client-urls={url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=e2e=http://127.0.0.1:{peer}",
                "--listen-metrics-urls=",
                "--quota-backend-bytes=1073741824",
                "--unsafe-no-fsync",
            ],
            env={"ETCD_UNSUPPORTED_ARCH": ""},
        )

        def healthy() -> bool:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.etcd_port), timeout=1),
            ):
                return True
            return False

        self._wait_ready(proc, "etcd", healthy, 60)

    def _apiserver(self) -> None:
        pki = self.state / "pki"
        proc = self._spawn(
            "kube-apiserver",
            [
                self.tools["kube-apiserver"],
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.api_port}",
                f"--cert-dir={self.state / 'apiserver'}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--token-auth-file={pki / 'tokens.csv'}",
                "--authorization-mode=Node,RBAC",
                f"--kubelet-client-certificate={pki / 'kubelet-client.crt'}",
                f"--kubelet-client-key={pki / 'kubelet-client.key'}",
                "--kubelet-preferred-address-types=Hostname",
                f"--service-cluster-ip-range={SERVICE_RANGE}",
                "--endpoint-reconciler-type=none",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--allow-privileged=true",
                "--profiling=false",
                "--enable-priority-and-fairness=false",
                "--v=1",
            ],
        )

        def ready() -> bool:
            done = self.kubectl("get", "--raw", "/readyz", check=False, timeout=10)
            return done.returncode == 0 and done.stdout.strip() == "ok"

        self._wait_ready(proc, "kube-apiserver /readyz", ready, 120)

    def _controller_manager(self) -> None:
        pki = self.state / "pki"
        self._spawn(
            "kube-controller-manager",
            [
                self.tools["kube-controller-manager"],
                f"--kubeconfig={self.kubeconfig}",
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                f"--cert-dir={self.state / 'controller-manager'}",
                "--leader-elect=false",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                "--use-service-account-credentials=false",
                f"--flex-volume-plugin-dir={self.state / 'flexvolume'}",
                f"--service-cluster-ip-range={SERVICE_RANGE}",
                "--profiling=false",
                "--v=1",
                *self._node_monitor_flags(),
            ],
        )

    def _node_monitor_flags(self) -> list[str]:
        """With two nodes, a node whose kubelet stops is NotReady after 20 s instead of 50 s
        (its kubelet renews its lease every 5 s: see ``LEASE_SECONDS``)."""
        return ["--node-monitor-grace-period=20s"] if len(self.nodes) > 1 else []

    def _scheduler(self) -> None:
        self._spawn(
            "kube-scheduler",
            [
                self.tools["kube-scheduler"],
                f"--kubeconfig={self.kubeconfig}",
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                "--leader-elect=false",
                "--profiling=false",
                "--v=1",
            ],
        )

    def _containerd(self, node: Node) -> None:
        if node is self.nodes[0]:
            self.made_run_dir = not SHIM_RUN_DIR.exists()
            if self.made_run_dir:
                self.ledger.record_host_dir(SHIM_RUN_DIR)
                self.ledger.record_host_dir(SHIM_RUN_DIR / "s")
        base = node.containerd_dir
        cni_bin = node.home / "cni" / "bin"
        cni_conf = node.home / "cni" / "conf"
        for d in (base, cni_bin, cni_conf):
            d.mkdir(parents=True, exist_ok=True)
        shutil.copy2(HERE / "cni" / "csi-oxide-e2e-net", cni_bin / "csi-oxide-e2e-net")
        loopback = next(
            (
                p
                for p in (Path("/usr/lib/cni/loopback"), Path("/opt/cni/bin/loopback"))
                if p.exists()
            ),
            None,
        )
        if loopback is None:
            raise RuntimeError(
                "the CNI loopback plugin is missing (apt-get install containernetworking-plugins)"
            )
        (cni_bin / "loopback").symlink_to(loopback)
        (cni_conf / "10-e2e.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "0.4.0",
                    "name": "csi-oxide-e2e",
                    "plugins": [{"type": "csi-oxide-e2e-net"}],
                }
            )
        )
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config = f"""
version = 2
root = "{base / "root"}"
state = "{base / "state"}"
disabled_plugins = [
  "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp",
]
[grpc]
  address = "{node.containerd_sock}"
[ttrpc]
  address = "{node.containerd_sock}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[{cri}]
  sandbox_image = "registry.k8s.io/pause:3.10"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "{shutil.which("runc") or "/usr/sbin/runc"}"
        Root = "{base / "runc"}"
  [{cri}.cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
"""
        (base / "config.toml").write_text(config)
        proc = self._spawn(
            f"containerd{node.tag}",
            ["containerd", "--config", base / "config.toml"],
            env={
                "HTTP_PROXY": CLOSED_PORT,
                "HTTPS_PROXY": CLOSED_PORT,
                "http_proxy": CLOSED_PORT,
                "https_proxy": CLOSED_PORT,
                "NO_PROXY": "",
                "no_proxy": "",
            },
        )
        self._wait_ready(proc, "containerd socket", node.containerd_sock.exists, 60)

    def ctr(self, *args: str, node: Node | None = None) -> subprocess.CompletedProcess[str]:
        sock = (node or self.nodes[0]).containerd_sock
        return subprocess.run(
            ["ctr", "--address", str(sock), "-n", "k8s.io", *args],
            capture_output=True,
            text=True,
            check=False,
        )

    def _kubelet(self, node: Node) -> None:
        for path in (DEVICE_PLUGINS.parent, DEVICE_PLUGINS, CONTAINER_LOG_LINKS):
            if not path.exists() and path not in self.made_host_dirs:
                self.made_host_dirs.insert(0, path)  # deepest first, for removal
                self.ledger.record_host_dir(path)
        kdir = node.kubelet_dir
        kdir.mkdir(parents=True)
        node.pod_logs.mkdir()
        self.ledger.record_cgroup(node.pods_cgroup)
        if node.cgroup_root:
            self.ledger.record_cgroup(node.cgroup_root)
            make_cgroup(node.cgroup_root)
        config = self._kubelet_config(node)
        (kdir / "config.json").write_text(json.dumps(config))
        self._spawn(f"kubelet{node.tag}", self._kubelet_argv(node))

    def _kubelet_argv(self, node: Node) -> list[str | Path]:
        kdir = node.kubelet_dir
        return [
            self.tools["kubelet"],
            f"--config={kdir / 'config.json'}",
            f"--kubeconfig={node.kubeconfig}",
            f"--root-dir={kdir}",
            f"--cert-dir={kdir / 'pki'}",
            f"--hostname-override={node.name}",
            f"--node-ip={self.node_ip}",
            "--v=1",
        ]

    def _kubelet_config(self, node: Node) -> dict[str, Any]:
        config: dict[str, Any] = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": node.address,
            "port": free_port(),
            "readOnlyPort": 0,
            "healthzBindAddress": node.address,
            "healthzPort": 0,
            "cgroupDriver": "cgroupfs",
            "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{node.containerd_sock}",
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(self.state / "pki" / "ca.crt")},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "podLogsDir": str(node.pod_logs),
            "volumePluginDir": str(node.kubelet_dir / "volumeplugins"),
            "maxPods": 40,
            "serializeImagePulls": False,
            "resolvConf": "/etc/resolv.conf",
            "fileCheckFrequency": "5s",
            "nodeStatusUpdateFrequency": "5s",
            "syncFrequency": "10s",
        }
        if node.cgroup_root:
            config["cgroupRoot"] = "/" + node.cgroup_root
        if len(self.nodes) > 1:
            config["nodeLeaseDurationSeconds"] = LEASE_SECONDS  # renewed every quarter of it
        return config

    def node_ready(self, name: str) -> bool:
        found = self.get("node", name)
        if found is None:
            return False
        return any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in found["status"].get("conditions", [])
        )

    def _wait_node_ready(self, node: Node) -> None:
        proc = self._proc(f"kubelet{node.tag}")
        assert proc is not None
        self._wait_ready(proc, f"node {node.name} Ready", lambda: self.node_ready(node.name), 120)

    def stop_kubelet(self, name: str) -> None:
        """Stop one node's kubelet (its pods keep running, as on a node that lost its kubelet)."""
        node = self.node(name)
        proc = self._proc(f"kubelet{node.tag}")
        assert proc is not None
        self._stop_proc(proc)

    def start_kubelet(self, name: str) -> None:
        """Start a stopped kubelet again, as it was; wait until its node is Ready."""
        node = self.node(name)
        self._spawn(f"kubelet{node.tag}", self._kubelet_argv(node))
        self._wait_node_ready(node)

    # ---- diagnostics -------------------------------------------------------------------------
    def pod_log(self, namespace: str, pod: str, container: str) -> str:
        """A container's log from the kubelets' log folders (never through a kubelet's API)."""
        found = sorted(
            path
            for node in self.nodes
            for path in node.pod_logs.glob(f"{namespace}_{pod}_*/{container}/*.log")
        )
        return "\n".join(p.read_text(errors="replace") for p in found)

    def diagnostics(self) -> str:
        """The driver's container logs and the kubelets' CSI lines, for a failure message."""
        parts = []
        for node in self.nodes:
            for d in sorted(node.pod_logs.glob("kube-system_csi-oxide-*")):
                for log_file in sorted(d.glob("*/*.log")):
                    text = log_file.read_text(errors="replace")[-2500:]
                    parts.append(f"--- {d.name.split('_')[1]}/{log_file.parent.name}\n{text}")
            kubelet = self.state / "logs" / f"kubelet{node.tag}.log"
            if kubelet.exists():
                lines = kubelet.read_text(errors="replace").splitlines()
                csi = [ln for ln in lines if "csi" in ln.lower() or "plugin" in ln.lower()]
                parts.append(f"--- kubelet{node.tag} (csi/plugin lines)\n" + "\n".join(csi[-40:]))
        return "\n".join(parts)

    # ---- teardown ----------------------------------------------------------------------------
    def _stop_proc(self, proc: Proc, timeout: float = 20) -> None:
        if proc.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.popen.send_signal(signal.SIGTERM)
        try:
            proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.popen.kill()
            proc.popen.wait(10)

    def _proc(self, name: str) -> Proc | None:
        """The latest process started under ``name``."""
        return next((p for p in reversed(self.procs) if p.name == name), None)

    def _our_shims(self) -> list[int]:
        """PIDs of containerd shims serving our containerds (found by our state folder in their
        argv: each names its containerd's socket)."""
        return processes_naming([str(self.state)], b"containerd-shim")

    def _stop_containers(self, node: Node) -> None:
        """Every task of the node's containerd killed and deleted."""
        if not node.containerd_sock.exists():
            return
        tasks = self.ctr("tasks", "ls", "-q", node=node).stdout.split()
        for task in tasks:
            self.ctr("tasks", "kill", "-s", "SIGKILL", task, node=node)
        for task in tasks:  # -f: killed by force if the SIGKILL has not landed yet
            self.ctr("tasks", "delete", "-f", task, node=node)

    def _remove_host_traces(self) -> list[str]:
        """The kubelets' log links and the host folders they made; what could not go."""
        problems = []
        if CONTAINER_LOG_LINKS.is_dir():
            for link in CONTAINER_LOG_LINKS.iterdir():
                with contextlib.suppress(OSError):
                    if link.is_symlink() and os.readlink(link).startswith(str(self.state)):
                        link.unlink()
        for path in self.made_host_dirs:
            (path / "kubelet.sock").unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                path.rmdir()
            if path.exists():
                problems.append(f"could not remove {path}, which the kubelet made")
        if self.made_run_dir:
            with contextlib.suppress(OSError):
                (SHIM_RUN_DIR / "s").rmdir()
                SHIM_RUN_DIR.rmdir()
        return problems

    def stop(self) -> list[str]:
        """Stop everything; remove the state folder. Returns what could not be cleaned."""
        problems: list[str] = []
        started = time.monotonic()
        steps: list[str] = []  # when each step ended, for a slow teardown's log line

        def step(name: str) -> None:
            steps.append(f"{name} {time.monotonic() - started:.1f}")

        for node in self.nodes:
            kubelet = self._proc(f"kubelet{node.tag}")
            if kubelet is not None:
                self._stop_proc(kubelet)
        step("kubelets")
        for node in self.nodes:
            self._stop_containers(node)
        step("containers")
        kill_cgroups([node.pods_cgroup for node in self.nodes])
        kill_cgroups([node.cgroup_root for node in self.nodes if node.cgroup_root])
        step("cgroups")
        names = [f"containerd{node.tag}" for node in self.nodes]
        for name in (*names, "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"):
            proc = self._proc(name)
            if proc is not None:
                self._stop_proc(proc)
        for pid in self._our_shims():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for proc in self.procs:
            self._stop_proc(proc)
        step("processes")
        problems += self._remove_host_traces()
        step("host traces")
        unmount_below([str(self.state)])
        step("unmounts")
        left = mounts_below([str(self.state)])
        problems += [f"still mounted: {p}" for p in left]
        problems += [f"shim still running: {pid}" for pid in self._our_shims()]
        problems += [
            f"cgroup {node.cgroup_root} left"
            for node in self.nodes
            if node.cgroup_root and (CGROUP_ROOT / "memory" / node.cgroup_root).exists()
        ]
        if not left:
            shutil.rmtree(self.state, ignore_errors=True)
            if self.state.exists():
                problems.append(f"could not remove {self.state}")
        step("files")
        if not problems:
            self.ledger.drop()
        log(
            f"teardown in {time.monotonic() - started:.1f} s (steps ended at: {', '.join(steps)})"
            + (f": {problems}" if problems else "")
        )
        return problems


def make_cgroup(relative: str) -> None:
    """Cgroup ``relative`` in every hierarchy (the kubelet wants its cgroup root to exist); a
    cpuset gets its parent's CPUs and memory nodes (a new one has none, and takes no task)."""
    for controller in sorted(CGROUP_ROOT.iterdir()):
        if controller.is_symlink() or not (controller / "cgroup.procs").exists():
            continue
        folder = controller / relative
        folder.mkdir(exist_ok=True)
        for knob in ("cpuset.cpus", "cpuset.mems"):
            parent = folder.parent / knob
            if parent.exists() and not (folder / knob).read_text().strip():
                (folder / knob).write_text(parent.read_text())


@contextlib.contextmanager
def running(tools: Tools, nodes: int = 1) -> Iterator[Cluster]:
    cluster = Cluster(tools, nodes)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
