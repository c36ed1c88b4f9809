"""The cluster's container images, made on this machine (no registry is reachable here).

- The driver: built with podman from the project's own Dockerfile. Its FROM image
  (python:3.11.14-slim-bookworm) is stood in for by a Debian bookworm rootfs made with debootstrap
  (Debian's python3 is 3.11), shaped like the official image where the Dockerfile relies on it: a
  ``python`` command and a pip that may install (no PEP 668 EXTERNALLY-MANAGED marker). The host's
  CA bundle goes in because PyPI is reached through a CA Debian's bundle lacks. Cached by recipe.
- The sidecars and the snapshot controller: each static Go binary alone in an image.
- A test image: Debian's busybox-static under the name the examples use.
- The pod sandbox ("pause"): busybox's shell waiting for a signal, named
  ``registry.k8s.io/pause:3.10`` (containerd's sandbox image) and ``registry.k8s.io/pause:3.10.1``
  (the e2e suite's manifest).

For the Kubernetes e2e suite (`make conformance`, conformance.py), under the names of its image
manifest (k8s.io/kubernetes test/utils/image/manifest.go, v1.34.4):

- ``registry.k8s.io/e2e-test-images/busybox:1.37.0-1``: Debian's busybox-static, as above (the
  suite's default test image: most of its pods run shell commands in it).
- ``registry.k8s.io/e2e-test-images/agnhost:2.56``: agnhost built from its Go source
  (k8s.io/kubernetes/test/images/agnhost at v1.34.4, static, scripts/cluster/build_tools.py) as
  ``/agnhost`` (+ ``/agnhost-2``), with busybox-static as the shell and tools (the upstream image
  is Alpine's busybox) and the user 1000 / group 50000 its Dockerfile adds. Entrypoint
  ``/agnhost``, command ``pause``, as upstream.
- ``registry.k8s.io/e2e-test-images/nginx:1.14-4``: Debian bookworm's nginx-light in a
  debootstrap minbase rootfs (cached by recipe). The suite's "should allow exec of files on the
  volume" runs a shell script in this image; nginx itself is Debian's, not 1.14.
- ``registry.k8s.io/e2e-test-images/jessie-dnsutils:1.7``: Debian bookworm's dnsutils in a
  debootstrap minbase rootfs (cached by recipe); the multi-volume specs write and read the
  volume in it with coreutils' dd (direct I/O), sha256sum, base64 and util-linux's blockdev.

Every image is written as a docker-archive and imported into containerd's ``k8s.io`` namespace
under the exact name the manifests use, so nothing is ever pulled.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tests.e2e.leftovers import unmount_below

ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE = "docker.io/library/python:3.11.14-slim-bookworm"
DRIVER_IMAGE = "docker.io/library/csi-oxide:0.1.0"
BUSYBOX_IMAGE = "docker.io/library/busybox:1.37"
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
# The e2e suite's names (test/utils/image/manifest.go of k8s.io/kubernetes v1.34.4).
E2E_REGISTRY = "registry.k8s.io/e2e-test-images"
SUITE_BUSYBOX_IMAGE = f"{E2E_REGISTRY}/busybox:1.37.0-1"
SUITE_AGNHOST_IMAGE = f"{E2E_REGISTRY}/agnhost:2.56"
SUITE_NGINX_IMAGE = f"{E2E_REGISTRY}/nginx:1.14-4"
SUITE_PAUSE_IMAGE = "registry.k8s.io/pause:3.10.1"
SUITE_DNSUTILS_IMAGE = f"{E2E_REGISTRY}/jessie-dnsutils:1.7"
DNSUTILS_PACKAGES = ("dnsutils",)
DNSUTILS_RECIPE = "bookworm-minbase-dnsutils-1"
NGINX_PACKAGES = ("nginx-light",)
NGINX_RECIPE = "bookworm-minbase-nginx-1"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ("python3", "python3-pip", "python3-venv")
# Bump when the base recipe below changes: the cached rootfs is keyed by it.
BASE_RECIPE = "bookworm-minbase-1"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# podman here: crun fails on cgroup v1 hybrid mode, and raising rlimits is not permitted.
PODMAN = ("podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs")
PODMAN_LIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096")


@dataclass(frozen=True)
class Image:
    name: str
    archive: Path


def _log(msg: str) -> None:
    print(f"[images] {msg}", flush=True)


def _run(*cmd: str | Path, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(c) for c in cmd], check=True, **kwargs)  # type: ignore[call-overload,no-any-return]


# ---- docker-archive writer ------------------------------------------------------------------


def _add_file(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    tar.addfile(info, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    tar.addfile(info)


def _add_symlink(tar: tarfile.TarFile, name: str, target: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    tar.addfile(info)


def write_archive(
    path: Path,
    name: str | Sequence[str],
    files: Iterable[tuple[str, Path]],
    entrypoint: list[str],
    cmd: list[str] | None = None,
    symlinks: Iterable[tuple[str, str]] = (),
    dirs: Iterable[str] = ("tmp",),
    texts: Iterable[tuple[str, str]] = (),
) -> Path:
    """A one-layer docker-archive at ``path``: host ``files`` at their image paths, ``texts`` as
    files of that content; ``name`` may be several names for the same image."""
    with tempfile.TemporaryFile() as layer_buf:
        with tarfile.open(fileobj=layer_buf, mode="w") as layer:
            made: set[str] = set()
            for d in dirs:
                _add_dir(layer, d, 0o1777 if d == "tmp" else 0o755)
                made.add(d)
            for image_path, host in files:
                parent = os.path.dirname(image_path)
                if parent and parent not in made:
                    _add_dir(layer, parent)
                    made.add(parent)
                info = layer.gettarinfo(str(host), arcname=image_path)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                with host.open("rb") as f:
                    layer.addfile(info, f)
            for image_path, content in texts:
                parent = os.path.dirname(image_path)
                if parent and parent not in made:
                    _add_dir(layer, parent)
                    made.add(parent)
                _add_file(layer, image_path, content.encode())
            for link, target in symlinks:
                _add_symlink(layer, link, target)
        return _pack(path, name, layer_buf, entrypoint, cmd)


def archive_from_rootfs(
    path: Path, name: str, rootfs_tar: Path, entrypoint: list[str], cmd: list[str] | None = None
) -> Path:
    """A one-layer docker-archive at ``path`` whose layer is the tarball ``rootfs_tar``."""
    with rootfs_tar.open("rb") as layer_buf:
        return _pack(path, name, layer_buf, entrypoint, cmd)


def _pack(
    path: Path,
    name: str | Sequence[str],
    layer_buf: IO[bytes],
    entrypoint: list[str],
    cmd: list[str] | None,
) -> Path:
    names = [name] if isinstance(name, str) else list(name)
    layer_buf.seek(0)
    digest = hashlib.sha256()
    while chunk := layer_buf.read(1 << 20):
        digest.update(chunk)
    diff_id = f"sha256:{digest.hexdigest()}"
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": entrypoint,
            "Cmd": cmd,
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "csi-oxide tests/e2e/images.py"}],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    layer_name = digest.hexdigest() + "/layer.tar"
    manifest = [{"Config": config_name, "RepoTags": names, "Layers": [layer_name]}]
    tmp = path.with_suffix(".part")
    with tarfile.open(tmp, mode="w") as out:
        _add_file(out, config_name, config_bytes)
        _add_dir(out, digest.hexdigest())
        info = tarfile.TarInfo(layer_name)
        info.size = layer_buf.seek(0, io.SEEK_END)
        layer_buf.seek(0)
        out.addfile(info, layer_buf)
        _add_file(out, "manifest.json", json.dumps(manifest).encode())
    tmp.rename(path)
    return path


# ---- the images -------------------------------------------------------------------------------


def sidecar_image(name: str, binary: Path, out_dir: Path) -> Image:
    """``name`` (e.g. registry.k8s.io/sig-storage/csi-attacher:v4.12.0) holding ``binary``."""
    exe = binary.name.rsplit("-v", 1)[0]  # .tools/cluster/csi-attacher-v4.12.0 -> csi-attacher
    archive = out_dir / f"{exe}.tar"
    write_archive(archive, name, [(exe, binary)], entrypoint=[f"/{exe}"])
    return Image(name, archive)


def _busybox() -> Path:
    found = shutil.which("busybox")
    if found is None:
        raise RuntimeError("busybox not found (apt-get install busybox-static)")
    return Path(found)


def _busybox_links(busybox: Path) -> list[tuple[str, str]]:
    """Every applet of ``busybox`` as a /bin link to it."""
    listed = subprocess.run([busybox, "--list"], check=True, capture_output=True, text=True)
    return [(f"bin/{a}", "busybox") for a in listed.stdout.split() if a != "busybox"]


def busybox_image(out_dir: Path, names: Sequence[str] = (BUSYBOX_IMAGE,)) -> Image:
    """Debian's busybox-static with every applet linked in /bin, under each of ``names``."""
    busybox = _busybox()
    archive = out_dir / f"busybox-{hashlib.sha256(' '.join(names).encode()).hexdigest()[:8]}.tar"
    write_archive(
        archive, names, [("bin/busybox", busybox)], ["/bin/sh"], symlinks=_busybox_links(busybox)
    )
    return Image(names[0], archive)


# The users and groups agnhost's Dockerfile adds (a test of supplemental groups relies on them).
AGNHOST_PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "user-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh\n"
)
AGNHOST_GROUP = (
    "root:x:0:\nuser-defined-in-image:x:1000:\n"
    "group-defined-in-image:x:50000:user-defined-in-image\n"
)


def agnhost_image(agnhost: Path, out_dir: Path) -> Image:
    """The suite's agnhost: the binary built from its Go source, busybox as shell and tools."""
    busybox = _busybox()
    archive = out_dir / "agnhost.tar"
    write_archive(
        archive,
        SUITE_AGNHOST_IMAGE,
        [("agnhost", agnhost), ("bin/busybox", busybox)],
        entrypoint=["/agnhost"],
        cmd=["pause"],
        symlinks=[("agnhost-2", "agnhost"), *_busybox_links(busybox)],
        dirs=("tmp", "etc", "uploads"),
        texts=[("etc/passwd", AGNHOST_PASSWD), ("etc/group", AGNHOST_GROUP)],
    )
    return Image(SUITE_AGNHOST_IMAGE, archive)


def debian_rootfs(
    cache_dir: Path,
    stem: str,
    recipe: str,
    packages: Sequence[str],
    *,
    shape: Callable[[Path], None] | None = None,
    key_extra: bytes = b"",
) -> Path:
    """A debootstrap minbase bookworm rootfs with ``packages``, as a tarball (cached by recipe).

    ``shape`` changes the fresh rootfs before it is packed; ``key_extra`` is what else its recipe
    depends on (part of the cache key)."""
    recipe_text = f"{recipe} {' '.join(packages)}" + (f" {key_extra!r}" if key_extra else "")
    key = hashlib.sha256(recipe_text.encode()).hexdigest()[:12]
    target = cache_dir / f"{stem}-{key}.tar"
    if target.exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    _log(f"debootstrap bookworm (minbase + {' '.join(packages)}) ...")
    with tempfile.TemporaryDirectory(prefix=f"csi-oxide-{stem}-", dir=cache_dir) as tmp:
        rootfs = Path(tmp) / "rootfs"
        try:
            _run(
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(packages)}",
                "bookworm",
                rootfs,
                DEBIAN_MIRROR,
                stdout=subprocess.DEVNULL,
            )
        finally:
            # debootstrap mounts /proc (and /sys) inside while it installs; one it left behind
            # (seen once: a busy /proc) would be packed into the image and stop the clean-up.
            unmount_below([str(rootfs)])
        if shape is not None:
            shape(rootfs)
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for p in (rootfs / junk).glob("*"):
                if p.is_file():
                    p.unlink()
        part = target.with_suffix(".part")
        _run("tar", "--numeric-owner", "-C", rootfs, "-cf", part, ".")
        part.rename(target)
    _log(f"{stem} rootfs ready in {time.monotonic() - started:.0f} s")
    return target


def nginx_image(cache_dir: Path, out_dir: Path) -> Image:
    """The suite's nginx image: Debian's nginx-light in a minbase rootfs."""
    rootfs = debian_rootfs(cache_dir, "nginx", NGINX_RECIPE, NGINX_PACKAGES)
    archive = out_dir / "nginx.tar"
    archive_from_rootfs(
        archive, SUITE_NGINX_IMAGE, rootfs, ["/usr/sbin/nginx"], ["-g", "daemon off;"]
    )
    return Image(SUITE_NGINX_IMAGE, archive)


PAUSE_SCRIPT = "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done"


def dnsutils_image(cache_dir: Path, out_dir: Path) -> Image:
    """The suite's jessie-dnsutils image: Debian's dnsutils in a minbase rootfs."""
    rootfs = debian_rootfs(cache_dir, "dnsutils", DNSUTILS_RECIPE, DNSUTILS_PACKAGES)
    archive = out_dir / "dnsutils.tar"
    archive_from_rootfs(archive, SUITE_DNSUTILS_IMAGE, rootfs, [], ["/bin/sh"])
    return Image(SUITE_DNSUTILS_IMAGE, archive)


def pause_image(out_dir: Path) -> Image:
    """The pod sandbox, under containerd's sandbox name and the suite's."""
    archive = out_dir / "pause.tar"
    write_archive(
        archive,
        (PAUSE_IMAGE, SUITE_PAUSE_IMAGE),
        [("bin/busybox", _busybox())],
        entrypoint=["/bin/busybox", "sh", "-c", PAUSE_SCRIPT],
        symlinks=[("bin/sh", "busybox"), ("bin/sleep", "busybox")],
    )
    return Image(PAUSE_IMAGE, archive)


def _shape_like_python_slim(rootfs: Path) -> None:
    """Shaped like python:3.11-slim where the Dockerfile relies on it; the host's CA bundle in."""
    (rootfs / "usr/local/bin/python").symlink_to("/usr/bin/python3")
    for marker in (rootfs / "usr/lib").glob("python3*/EXTERNALLY-MANAGED"):
        marker.unlink()
    shutil.copyfile(HOST_CA_BUNDLE, rootfs / "etc/ssl/certs/ca-certificates.crt")


def base_rootfs(cache_dir: Path) -> Path:
    """The stand-in for the Dockerfile's FROM image as a rootfs tarball (cached by recipe)."""
    return debian_rootfs(
        cache_dir,
        "python-base",
        BASE_RECIPE,
        BASE_PACKAGES,
        shape=_shape_like_python_slim,
        key_extra=HOST_CA_BUNDLE.read_bytes(),
    )


def driver_image(cache_dir: Path, out_dir: Path) -> Image:
    """The driver image, built from the project's Dockerfile with podman."""
    rootfs = base_rootfs(cache_dir)
    have = subprocess.run(
        [*PODMAN, "image", "exists", BASE_IMAGE], check=False, capture_output=True
    )
    if have.returncode != 0:
        _run(*PODMAN, "import", "--quiet", rootfs, BASE_IMAGE, stdout=subprocess.DEVNULL)
    started = time.monotonic()
    _log("podman build of the Dockerfile ...")
    _run(
        *PODMAN,
        "build",
        *PODMAN_LIMITS,
        "--network",
        "host",
        "--pull=never",
        "-t",
        DRIVER_IMAGE,
        "-f",
        ROOT / "Dockerfile",
        ROOT,
        stdout=subprocess.DEVNULL,
    )
    # Each build leaves the previous image and the builder stage untagged; keep the recent ones
    # (the layer cache of the next run), drop the rest so podman's storage does not grow.
    subprocess.run(
        [*PODMAN, "image", "prune", "-f", "--filter", "until=30m"],
        check=False,
        capture_output=True,
    )
    archive = out_dir / "csi-oxide.tar"
    archive.unlink(missing_ok=True)
    _run(*PODMAN, "save", "--quiet", "--format", "docker-archive", "-o", archive, DRIVER_IMAGE)
    _log(f"driver image built and saved in {time.monotonic() - started:.0f} s")
    return Image(DRIVER_IMAGE, archive)


def import_images(images: Iterable[Image], ctr_address: Path) -> None:
    """Import each archive into containerd's k8s.io namespace under its name."""
    for image in images:
        _run(
            "ctr",
            "--address",
            ctr_address,
            "-n",
            "k8s.io",
            "images",
            "import",
            image.archive,
            stdout=subprocess.DEVNULL,
        )
