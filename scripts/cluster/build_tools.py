#!/usr/bin/env python3
"""Build the one-node cluster's binaries from their Go modules, cached under .tools/ by version.

Kubernetes (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet) and the
kubernetes-csi sidecars carry `replace` directives in their go.mod, so `go install mod@version`
refuses them. Each is built through a throwaway wrapper module that requires the real module and
repeats its replace lines against published versions (a `./staging/src/k8s.io/X` replace becomes
`k8s.io/X v0.<minor>.<patch>`; a `./client` replace becomes the published client module).

A binary already present under .tools/cluster/<name>-<version> is not rebuilt, so a second run
builds nothing. Builds are static (CGO_ENABLED=0) so the sidecar images need nothing but the binary.

The e2e suite binary (e2e.test, a `go test -c` of k8s.io/kubernetes/test/e2e) and agnhost are
built only with --suite or --only (`make conformance`).

Usage: build_tools.py [--tools-dir DIR] [--only NAME ...] [--suite] [--list]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

KUBE_VERSION = "v1.34.4"
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Tool:
    name: str  # the binary's name
    module: str  # the Go module holding it
    version: str
    package: str  # the main package
    plain: bool = False  # `go install` works (no replace directives)
    ldflags: str = ""
    test: bool = False  # a test binary: `go test -c` of the package (the e2e suite)


def _kube_ldflags(version: str) -> str:
    major, minor = version.lstrip("v").split(".")[:2]
    pkg = "k8s.io/component-base/version"
    return " ".join(
        [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            "-s -w",
        ]
    )


def _kube(name: str) -> Tool:
    return Tool(
        name=name,
        module="k8s.io/kubernetes",
        version=KUBE_VERSION,
        package=f"k8s.io/kubernetes/cmd/{name}",
        ldflags=_kube_ldflags(KUBE_VERSION),
    )


def _sidecar(name: str, module: str, version: str, cmd: str, plain: bool = False) -> Tool:
    return Tool(
        name=name,
        module=module,
        version=version,
        package=f"{module}/cmd/{cmd}",
        plain=plain,
        ldflags=f"-X main.version={version} -s -w",
    )


TOOLS: tuple[Tool, ...] = (
    _kube("kube-apiserver"),
    _kube("kube-controller-manager"),
    _kube("kube-scheduler"),
    _kube("kubelet"),
    _kube("kubectl"),
    _sidecar(
        "csi-provisioner",
        "github.com/kubernetes-csi/external-provisioner/v6",
        "v6.3.0",
        "csi-provisioner",
    ),
    _sidecar(
        "csi-attacher", "github.com/kubernetes-csi/external-attacher/v4", "v4.12.0", "csi-attacher"
    ),
    _sidecar(
        "csi-snapshotter",
        "github.com/kubernetes-csi/external-snapshotter/v8",
        "v8.6.0",
        "csi-snapshotter",
    ),
    _sidecar(
        "snapshot-controller",
        "github.com/kubernetes-csi/external-snapshotter/v8",
        "v8.6.0",
        "snapshot-controller",
    ),
    _sidecar(
        "csi-resizer",
        "github.com/kubernetes-csi/external-resizer/v2",
        "v2.3.0",
        "csi-resizer",
        plain=True,
    ),
    # helm installs the chart (deploy/helm/csi-oxide); no replace lines, so `go install` builds
    # it. The ldflags are those of helm's own Makefile: its version, and the Kubernetes version
    # of its client-go (v0.37 -> 1.37) as `helm template`'s and `helm lint`'s default cluster.
    Tool(
        name="helm",
        module="helm.sh/helm/v3",
        version="v3.22.0",
        package="helm.sh/helm/v3/cmd/helm",
        plain=True,
        ldflags=" ".join(
            [
                "-X helm.sh/helm/v3/internal/version.version=v3.22.0",
                "-X helm.sh/helm/v3/internal/version.gitTreeState=clean",
                *(
                    f"-X helm.sh/helm/v3/pkg/{p}.k8sVersionMajor=1"
                    for p in ("lint/rules", "chartutil")
                ),
                *(
                    f"-X helm.sh/helm/v3/pkg/{p}.k8sVersionMinor=37"
                    for p in ("lint/rules", "chartutil")
                ),
                "-s -w",
            ]
        ),
    ),
)

# What `make conformance` needs on top (tests/e2e/conformance.py), built only when asked for
# (--suite or --only): Kubernetes' own e2e suite, compiled from the same module and version as the
# cluster (`go test -c k8s.io/kubernetes/test/e2e`), and agnhost, the suite's test program (its
# image, registry.k8s.io/e2e-test-images/agnhost:2.56, is made from this binary), and ginkgo.
SUITE_TOOLS: tuple[Tool, ...] = (
    Tool(
        name="e2e.test",
        module="k8s.io/kubernetes",
        version=KUBE_VERSION,
        package="k8s.io/kubernetes/test/e2e",
        ldflags=_kube_ldflags(KUBE_VERSION),
        test=True,
    ),
    Tool(
        name="agnhost",
        module="k8s.io/kubernetes",
        version=KUBE_VERSION,
        package="k8s.io/kubernetes/test/images/agnhost",
        ldflags="-s -w",
    ),
    # The ginkgo command runs e2e.test in parallel processes (-p), the [Serial] specs after them;
    # its version is the one k8s.io/kubernetes v1.34.4's go.mod requires, as the suite's library.
    Tool(
        name="ginkgo",
        module="github.com/onsi/ginkgo/v2",
        version="v2.21.0",
        package="github.com/onsi/ginkgo/v2/ginkgo",
        plain=True,
        ldflags="-s -w",
    ),
)
ALL_TOOLS = TOOLS + SUITE_TOOLS

SNAPSHOT_CLIENT = ("github.com/kubernetes-csi/external-snapshotter/client/v8", "v8.6.0")


def cached_path(tools_dir: Path, tool: Tool) -> Path:
    return tools_dir / f"{tool.name}-{tool.version}"


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env["CGO_ENABLED"] = "0"
    env.setdefault("GOTOOLCHAIN", "local")
    env["GOFLAGS"] = (env.get("GOFLAGS", "") + " -mod=mod -buildvcs=false").strip()
    return env


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    out = subprocess.run(
        cmd, cwd=cwd, env=_go_env(), check=True, stdout=subprocess.PIPE, text=True
    ).stdout
    return out


def _module_gomod(module: str, version: str, cwd: Path) -> dict[str, object]:
    info = json.loads(_run(["go", "mod", "download", "-json", f"{module}@{version}"], cwd=cwd))
    gomod = info["GoMod"]
    parsed: dict[str, object] = json.loads(_run(["go", "mod", "edit", "-json", gomod], cwd=cwd))
    return parsed


def _replace_lines(tool: Tool, gomod: dict[str, object]) -> list[str]:
    """The module's replace lines, with local paths turned into published modules."""
    lines = []
    staging_version = "v0." + ".".join(tool.version.lstrip("v").split(".")[1:])
    replaces = gomod.get("Replace") or []
    assert isinstance(replaces, list)
    for rep in replaces:
        old = rep["Old"]["Path"]
        old_v = rep["Old"].get("Version", "")
        new = rep["New"]["Path"]
        new_v = rep["New"].get("Version", "")
        lhs = f"{old} {old_v}".strip()
        if new.startswith("./staging/src/"):
            lines.append(f"{lhs} => {old} {staging_version}")
        elif new.startswith("./client") and old == SNAPSHOT_CLIENT[0]:
            lines.append(f"{lhs} => {SNAPSHOT_CLIENT[0]} {SNAPSHOT_CLIENT[1]}")
        elif new.startswith("."):
            raise SystemExit(f"{tool.module}: unknown local replace {old} => {new}")
        else:
            lines.append(f"{lhs} => {new} {new_v}".strip())
    return lines


def build(tool: Tool, tools_dir: Path, jobs: int) -> Path:
    target = cached_path(tools_dir, tool)
    if target.exists():
        return target
    tools_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    print(f"building {tool.name} {tool.version} ...", flush=True)
    with tempfile.TemporaryDirectory(prefix=f"wrap-{tool.name}-") as tmp:
        work = Path(tmp)
        out = work / tool.name
        if tool.plain:
            env_gobin = work / "bin"
            env_gobin.mkdir()
            subprocess.run(
                [
                    "go",
                    "install",
                    f"-p={jobs}",
                    f"-ldflags={tool.ldflags}",
                    f"{tool.package}@{tool.version}",
                ],
                env={**_go_env(), "GOBIN": str(env_gobin), "GOFLAGS": "-buildvcs=false"},
                check=True,
            )
            shutil.move(str(env_gobin / tool.name), out)
        else:
            (work / "go.mod").write_text("module wrapper\n\ngo 1.24\n")
            gomod = _module_gomod(tool.module, tool.version, work)
            replaces = _replace_lines(tool, gomod)
            text = "module wrapper\n\ngo 1.24\n\n"
            text += f"require {tool.module} {tool.version}\n\n"
            if replaces:
                text += "replace (\n" + "".join(f"\t{r}\n" for r in replaces) + ")\n"
            (work / "go.mod").write_text(text)
            (work / "tools.go").write_text(
                f'//go:build tools\n\npackage tools\n\nimport _ "{tool.package}"\n'
            )
            _run(["go", "mod", "tidy", "-e"], cwd=work)
            subprocess.run(
                [
                    "go",
                    *(("test", "-c") if tool.test else ("build",)),
                    f"-p={jobs}",
                    "-trimpath",
                    f"-ldflags={tool.ldflags}",
                    "-o",
                    str(out),
                    tool.package,
                ],
                cwd=work,
                env=_go_env(),
                check=True,
            )
        tmp_target = target.with_suffix(".tmp")
        shutil.copy2(out, tmp_target)
        tmp_target.rename(target)
    print(f"built {tool.name} {tool.version} in {time.monotonic() - started:.0f} s", flush=True)
    return target


def snapshot_crd_dir() -> Path:
    """The snapshot CRDs, from the published client module (downloaded when missing)."""
    module, version = SNAPSHOT_CLIENT
    with tempfile.TemporaryDirectory() as tmp:
        info = json.loads(
            _run(["go", "mod", "download", "-json", f"{module}@{version}"], Path(tmp))
        )
    return Path(info["Dir"]) / "config" / "crd"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tools-dir", type=Path, default=ROOT / ".tools" / "cluster")
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--jobs", type=int, default=2, help="go build -p (at most 2 here)")
    parser.add_argument("--list", action="store_true", help="print name=path and exit")
    parser.add_argument("--crd-dir", action="store_true", help="print the snapshot CRD folder")
    parser.add_argument(
        "--suite", action="store_true", help="also build the e2e suite (e2e.test) and agnhost"
    )
    args = parser.parse_args()
    if args.crd_dir:
        print(snapshot_crd_dir())
        return 0
    if args.only is not None:
        unknown = set(args.only) - {t.name for t in ALL_TOOLS}
        if unknown:
            parser.error(f"unknown tool(s): {', '.join(sorted(unknown))}")
        tools = [t for t in ALL_TOOLS if t.name in args.only]
    else:
        tools = list(TOOLS + SUITE_TOOLS if args.suite or args.list else TOOLS)
    if args.list:
        for t in tools:
            print(f"{t.name}={cached_path(args.tools_dir, t)}")
        return 0
    for t in tools:
        build(t, args.tools_dir, args.jobs)
    snapshot_crd_dir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
