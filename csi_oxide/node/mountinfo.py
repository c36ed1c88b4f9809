"""A pure parser of /proc/self/mountinfo (see proc(5))."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")
_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True, slots=True)
class Mount:
    """One line of mountinfo."""

    mount_id: int
    parent_id: int
    major_minor: str
    root: str
    mount_point: str
    options: tuple[str, ...]
    fstype: str
    source: str
    super_options: tuple[str, ...]

    @property
    def read_only(self) -> bool:
        """True when this mount (not just the filesystem) is read-only."""
        return "ro" in self.options


def unescape(text: str) -> str:
    """Undo the kernel's octal escapes (space is ``\\040``, newline ``\\012``...)."""
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), text)


def parse_line(line: str) -> Mount:
    """One mountinfo line; ValueError when it is malformed."""
    left, sep, right = line.partition(" - ")
    if not sep:
        raise ValueError(f"mountinfo line without separator: {line!r}")
    fields = left.split()
    tail = right.split()
    if len(fields) < 6 or len(tail) < 3:
        raise ValueError(f"mountinfo line too short: {line!r}")
    return Mount(
        mount_id=int(fields[0]),
        parent_id=int(fields[1]),
        major_minor=fields[2],
        root=unescape(fields[3]),
        mount_point=unescape(fields[4]),
        options=tuple(fields[5].split(",")),
        fstype=tail[0],
        source=unescape(tail[1]),
        super_options=tuple(tail[2].split(",")),
    )


def parse(text: str) -> list[Mount]:
    """Every mount in ``text``, in order (later lines are mounted on top of earlier ones)."""
    return [parse_line(line) for line in text.splitlines() if line.strip()]


def read(path: Path = MOUNTINFO) -> list[Mount]:
    """The mounts this process sees (blocking: call it in a thread)."""
    return parse(path.read_text())
