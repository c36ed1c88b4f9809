"""What ``csi-oxide serve`` refuses at start, before it serves anything."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("cluster_id", ["c" * 600, "two words", 'q"uote'])
def test_an_unusable_cluster_id_is_refused_at_start(tmp_path: Path, cluster_id: str) -> None:
    """Without the check the controller would start (these credentials are well-formed) and only
    every CreateVolume would fail; the subprocess would then run until the timeout."""
    env = {
        **os.environ,
        "OXIDE_HOST": "http://127.0.0.1:9",
        "OXIDE_TOKEN": "oxide-token-for-a-test",
        "OXIDE_PROJECT": "csi",
        "HOME": str(tmp_path),
    }
    argv = [sys.executable, "-m", "csi_oxide", "serve", "--mode", "controller"]
    argv += ["--endpoint", f"unix://{tmp_path}/c.sock", "--cluster-id", cluster_id]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert "--cluster-id" in done.stderr
    assert not (tmp_path / "c.sock").exists()
