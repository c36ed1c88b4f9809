"""The units tests size disks, files and requests in: defined here once, imported everywhere."""

from __future__ import annotations

MIB = 1024**2
GIB = 1024**3
