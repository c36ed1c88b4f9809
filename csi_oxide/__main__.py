"""``python -m csi_oxide`` runs the command line."""

from __future__ import annotations

from csi_oxide.cli import main

raise SystemExit(main())
