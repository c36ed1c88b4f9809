"""csi-oxide: a Kubernetes CSI driver for Oxide disks (``csi.oxide.computer``)."""

from __future__ import annotations

__version__ = "0.1.0"
DRIVER_NAME = "csi.oxide.computer"
