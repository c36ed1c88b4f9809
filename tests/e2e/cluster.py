"""A one-node Kubernetes cluster on this machine, for the end-to-end test (root only).

etcd (Debian), kube-apiserver, kube-controller-manager, kube-scheduler and kubelet (built from the
Go module, scripts/cluster/build_tools.py), containerd + runc (Debian). Everything listens on
127.0.0.1 or on unix sockets in a temporary state folder; every process is started and stopped by
its PID; nothing is pulled (containerd's proxy is a closed loopback port). The kubelet registers
with this machine's own non-loopback address (it refuses a loopback one); nothing is ever sent to
it: the kubelet serves on 127.0.0.1 only, and probes in the test overlay name 127.0.0.1. The node
is named ``localhost``, so its Hostname address resolves to 127.0.0.1 and the API server, told to
prefer Hostname addresses, reaches the kubelet there for `kubectl exec`/`logs` (authenticated by
a client certificate of the cluster's CA, which the kubelet trusts).

`Cluster.stop()` leaves no process, mount, cgroup, loop device or file behind, also after a
failure half-way through `start()`.
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

ROOT = Path(__file__).resolve().parents[2]
TOOLS_DIR = ROOT / ".tools" / "cluster"
HERE = Path(__file__).resolve().parent
# The node's name is also its Hostname address, which the API server dials for exec/logs: it must
# resolve to loopback (the kubelet's registered InternalIP is never contacted).
NODE_NAME = "localhost"
SERVICE_RANGE = "127.100.0.0/16"
CGROUP_ROOT = Path("/sys/fs/cgroup")
# containerd's proxy: any pull fails at once, locally.
CLOSED_PORT = "http://127.0.0.1:9"
# containerd's shims put their sockets in /run/containerd/s whatever the config says.
SHIM_RUN_DIR = Path("/run/containerd")
# The kubelet's device manager uses this fixed path whatever its --root-dir...
DEVICE_PLUGINS = Path("/var/lib/kubelet/device-plugins")
# ... and links every container's log here, whatever its podLogsDir.
CONTAINER_LOG_LINKS = Path("/var/log/containers")


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
    state: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="csi-oxide-e2e-")))
    procs: list[Proc] = field(default_factory=list)
    admin_token: str = field(default_factory=lambda: secrets.token_hex(16))
    kubelet_token: str = field(default_factory=lambda: secrets.token_hex(16))
    etcd_port: int = 0
    api_port: int = 0
    node_ip: str = ""
    made_run_dir: bool = False
    made_host_dirs: list[Path] = field(default_factory=list)

    # ---- paths -------------------------------------------------------------------------------
    @property
    def kubeconfig(self) -> Path:
        return self.state / "admin.kubeconfig"

    @property
    def kubelet_dir(self) -> Path:
        return self.state / "kubelet"

    @property
    def containerd_sock(self) -> Path:
        return self.state / "containerd" / "containerd.sock"

    @property
    def pod_logs(self) -> Path:
        return self.state / "pod-logs"

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
        """Bring everything up; ``before_kubelet`` runs once containerd serves (image imports)."""
        started = time.monotonic()
        self.state.chmod(0o755)
        self.node_ip = node_address()
        self._pki()
        self._etcd()
        self._apiserver()
        self._controller_manager()
        self._scheduler()
        self._containerd()
        if before_kubelet is not None:
            before_kubelet(self)
        self._kubelet()
        log(f"cluster up in {time.monotonic() - started:.1f} s (state {self.state})")

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
        (pki / "tokens.csv").write_text(
            f'{self.admin_token},admin,admin,"system:masters"\n'
            f'{self.kubelet_token},system:node:{NODE_NAME},kubelet,"system:nodes"\n'
        )
        self.api_port = free_port()
        for name, token in (("admin", self.admin_token), ("kubelet", self.kubelet_token)):
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
                "users": [{"name": name, "user": {"token": token}}],
                "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": name}}],
                "current-context": "e2e",
            }
            path = self.state / f"{name}.kubeconfig"
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
            ],
        )

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

    def _containerd(self) -> None:
        self.made_run_dir = not SHIM_RUN_DIR.exists()
        base = self.state / "containerd"
        cni_bin = self.state / "cni" / "bin"
        cni_conf = self.state / "cni" / "conf"
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
  address = "{self.containerd_sock}"
[ttrpc]
  address = "{self.containerd_sock}.ttrpc"
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
            "containerd",
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
        self._wait_ready(proc, "containerd socket", self.containerd_sock.exists, 60)

    def ctr(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ctr", "--address", str(self.containerd_sock), "-n", "k8s.io", *args],
            capture_output=True,
            text=True,
            check=False,
        )

    def _kubelet(self) -> None:
        for path in (DEVICE_PLUGINS.parent, DEVICE_PLUGINS, CONTAINER_LOG_LINKS):
            if not path.exists():
                self.made_host_dirs.insert(0, path)  # deepest first, for removal
        kdir = self.kubelet_dir
        kdir.mkdir()
        self.pod_logs.mkdir()
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": "127.0.0.1",
            "port": free_port(),
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 0,
            "cgroupDriver": "cgroupfs",
            "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{self.containerd_sock}",
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
            "podLogsDir": str(self.pod_logs),
            "volumePluginDir": str(kdir / "volumeplugins"),
            "maxPods": 40,
            "serializeImagePulls": False,
            "resolvConf": "/etc/resolv.conf",
            "fileCheckFrequency": "5s",
            "nodeStatusUpdateFrequency": "5s",
            "syncFrequency": "10s",
        }
        (kdir / "config.json").write_text(json.dumps(config))
        proc = self._spawn(
            "kubelet",
            [
                self.tools["kubelet"],
                f"--config={kdir / 'config.json'}",
                f"--kubeconfig={self.state / 'kubelet.kubeconfig'}",
                f"--root-dir={kdir}",
                f"--cert-dir={kdir / 'pki'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={self.node_ip}",
                "--v=1",
            ],
        )

        def node_ready() -> bool:
            node = self.get("node", NODE_NAME)
            if node is None:
                return False
            return any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in node["status"].get("conditions", [])
            )

        self._wait_ready(proc, f"node {NODE_NAME} Ready", node_ready, 120)

    # ---- diagnostics -------------------------------------------------------------------------
    def pod_log(self, namespace: str, pod: str, container: str) -> str:
        """A container's log from the kubelet's log folder (never through the kubelet's API)."""
        found = sorted(self.pod_logs.glob(f"{namespace}_{pod}_*/{container}/*.log"))
        return "\n".join(p.read_text(errors="replace") for p in found)

    def diagnostics(self) -> str:
        """The driver's container logs and the kubelet's CSI lines, for a failure message."""
        parts = []
        for d in sorted(self.pod_logs.glob("kube-system_csi-oxide-*")):
            for log_file in sorted(d.glob("*/*.log")):
                text = log_file.read_text(errors="replace")[-2500:]
                parts.append(f"--- {d.name.split('_')[1]}/{log_file.parent.name}\n{text}")
        kubelet = self.state / "logs" / "kubelet.log"
        if kubelet.exists():
            lines = kubelet.read_text(errors="replace").splitlines()
            csi = [ln for ln in lines if "csi" in ln.lower() or "plugin" in ln.lower()]
            parts.append("--- kubelet (csi/plugin lines)\n" + "\n".join(csi[-40:]))
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
        return next((p for p in self.procs if p.name == name), None)

    def _our_shims(self) -> list[int]:
        """PIDs of containerd shims serving our containerd (found by our socket in their argv)."""
        pids = []
        needle = str(self.containerd_sock).encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"containerd-shim" in argv and needle in argv:
                pids.append(int(entry.name))
        return pids

    def _kill_pod_processes(self) -> None:
        """SIGKILL whatever still runs in the kubelet's pod cgroups, then remove them."""
        for controller in sorted(CGROUP_ROOT.iterdir()):
            kubepods = controller / "kubepods"
            if not kubepods.is_dir():
                continue
            for procs in kubepods.rglob("cgroup.procs"):
                with contextlib.suppress(OSError):
                    for pid in procs.read_text().split():
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(int(pid), signal.SIGKILL)
        time.sleep(0.5)
        for controller in sorted(CGROUP_ROOT.iterdir()):
            kubepods = controller / "kubepods"
            if not kubepods.is_dir():
                continue
            dirs = sorted(
                (p for p in kubepods.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)
            )
            for d in [*dirs, kubepods]:
                with contextlib.suppress(OSError):
                    d.rmdir()

    def _unmount_all(self) -> list[str]:
        """Unmount everything under the state folder, deepest first; what is still mounted."""
        state = str(self.state)

        def ours() -> list[str]:
            points = []
            for line in Path("/proc/self/mountinfo").read_text().splitlines():
                point = line.split()[4].replace("\\040", " ")
                if point == state or point.startswith(state + "/"):
                    points.append(point)
            return sorted(set(points), key=lambda p: -p.count("/"))

        for _ in range(3):
            for point in ours():
                subprocess.run(["umount", "-l", point], capture_output=True, check=False)
            if not ours():
                break
        return ours()

    def stop(self) -> list[str]:
        """Stop everything; remove the state folder. Returns what could not be cleaned."""
        problems: list[str] = []
        started = time.monotonic()
        kubelet = self._proc("kubelet")
        if kubelet is not None:
            self._stop_proc(kubelet)
        # Containers: stop every task through containerd, then the shims.
        if self.containerd_sock.exists():
            tasks = self.ctr("tasks", "ls", "-q").stdout.split()
            for task in tasks:
                self.ctr("tasks", "kill", "-s", "SIGKILL", task)
            time.sleep(0.5)
            for task in tasks:
                self.ctr("tasks", "delete", "-f", task)
        self._kill_pod_processes()
        for name in (
            "containerd",
            "kube-scheduler",
            "kube-controller-manager",
            "kube-apiserver",
            "etcd",
        ):
            proc = self._proc(name)
            if proc is not None:
                self._stop_proc(proc)
        for pid in self._our_shims():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for proc in self.procs:
            self._stop_proc(proc)
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
        left = self._unmount_all()
        problems += [f"still mounted: {p}" for p in left]
        problems += [f"shim still running: {pid}" for pid in self._our_shims()]
        if not left:
            shutil.rmtree(self.state, ignore_errors=True)
            if self.state.exists():
                problems.append(f"could not remove {self.state}")
        log(
            f"teardown in {time.monotonic() - started:.1f} s"
            + (f": {problems}" if problems else "")
        )
        return problems


@contextlib.contextmanager
def running(tools: Tools) -> Iterator[Cluster]:
    cluster = Cluster(tools)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
