"""The node's records must outlive its container: the DaemonSet keeps them on the host."""

from __future__ import annotations

from pathlib import Path

import yaml

from csi_oxide.cli import build_parser

NODE_YAML = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "base" / "node.yaml"


def test_the_state_dir_is_a_host_directory() -> None:
    pod = yaml.safe_load(NODE_YAML.read_text())["spec"]["template"]["spec"]
    ours = next(c for c in pod["containers"] if c["name"] == "csi-oxide")
    args = build_parser().parse_args(ours["args"])
    mount = next(m for m in ours["volumeMounts"] if m["mountPath"] == args.state_dir)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["hostPath"]["path"].rstrip("/") == args.state_dir
    assert not mount.get("readOnly", False)
