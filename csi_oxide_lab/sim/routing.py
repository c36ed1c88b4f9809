"""Matching a method and path to one served operation."""

from __future__ import annotations

import re
from dataclasses import dataclass

from csi_oxide_lab.sim.handlers import ROUTES, Handler


@dataclass(frozen=True, slots=True)
class Route:
    """One served operation."""

    method: str
    pattern: re.Pattern[str]
    operation_id: str
    handler: Handler


def _compile(template: str) -> re.Pattern[str]:
    regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template)
    return re.compile(regex)  # used with fullmatch: "$" would also accept a trailing newline


_TABLE = tuple(Route(m, _compile(t), op, h) for m, t, op, h in ROUTES)


class NoRouteError(Exception):
    """No served operation matches: ``status`` is 404 (unknown path) or 405 (wrong method)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def match(method: str, path: str) -> tuple[Route, dict[str, str]]:
    """The route for ``method`` and the (already percent-decoded) ``path``, and its path
    parameters."""
    path_matched = False
    for route in _TABLE:
        found = route.pattern.fullmatch(path)
        if found is None:
            continue
        if route.method == method:
            return route, found.groupdict()
        path_matched = True
    raise NoRouteError(405 if path_matched else 404)
