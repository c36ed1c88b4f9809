"""csi-oxide: a Kubernetes CSI driver for Oxide disks (``csi.oxide.computer``)."""

from __future__ import annotations

__version__ = "0.1.0"
DRIVER_NAME = "csi.oxide.computer"
# The Lease (coordination.k8s.io/v1) whose holder alone runs the controller's reconciler.
RECONCILER_LEASE = "csi-oxide-reconciler"
# The levels ``serve --log-level`` takes, least severe first (``csi_oxide.daemon.log``).
LOG_LEVELS = ("debug", "info", "warning", "error")
