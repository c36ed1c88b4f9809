"""Finding the Oxide host, token and project, the way Oxide's own SDKs and CLI do.

Order (Oxide's SDK rules, plus two driver extras):

1. ``OXIDE_HOST`` with ``OXIDE_TOKEN``, or with ``CSI_OXIDE_TOKEN_FILE`` (a file holding the token,
   such as a key of a mounted Kubernetes Secret; re-read whenever the file changes).
2. ``OXIDE_HOST`` alone: the profile of ``credentials.toml`` whose ``host`` is that host.
3. A profile from ``<config dir>/credentials.toml``: ``OXIDE_PROFILE``, else ``default-profile``
   from ``<config dir>/config.toml``. The config dir defaults to ``$HOME/.config/oxide``.

``OXIDE_HOST`` together with ``OXIDE_PROFILE`` is an error, as in the SDKs. ``OXIDE_PROJECT`` names
the project; ``CSI_OXIDE_CA_FILE`` a CA bundle to trust. A host without a scheme gets ``https://``.

Everything takes the environment and the config dir as arguments, so nothing here reads global
state except the files it is pointed at. No message, log line or repr ever carries a token.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import threading
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

import structlog

from csi_oxide.errors import ConfigurationError
from csi_oxide.host.files import read_small

log = structlog.get_logger("csi_oxide.oxide.credentials")

TokenProvider = Callable[[], str]
"""Returns the bearer token to send now (a rotated token takes effect at the next request)."""

OXIDE_HOST = "OXIDE_HOST"
# Names of environment variables, not secrets.
OXIDE_TOKEN = "OXIDE_TOKEN"  # noqa: S105
OXIDE_PROFILE = "OXIDE_PROFILE"
OXIDE_PROJECT = "OXIDE_PROJECT"
TOKEN_FILE = "CSI_OXIDE_TOKEN_FILE"  # noqa: S105
CA_FILE = "CSI_OXIDE_CA_FILE"


class StaticToken:
    """A token fixed for the life of the process. Its repr and str hide the value."""

    __slots__ = ("_token",)

    def __init__(self, token: str, *, origin: str = "the token") -> None:
        self._token = check_token(token, origin)

    def __call__(self) -> str:
        return self._token

    def __repr__(self) -> str:
        return "StaticToken(<hidden>)"

    __str__ = __repr__


class FileToken:
    """The token held in a file, re-read when the file's inode, size or mtime changes.

    A Kubernetes Secret update swaps the file behind a symlink, so the next request after the
    kubelet refreshes the volume uses the new token without a restart. The first read happens in the
    constructor and fails with ``ConfigurationError``; a later unreadable or invalid file keeps the
    last good token (and logs a warning), because a rotation in progress must not break requests.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        try:
            key = _file_key(path)
            self._token = _read_token(path)
        except OSError as exc:
            raise ConfigurationError(
                f"{TOKEN_FILE}: cannot read the token file {path}: {exc.strerror or exc}"
            ) from None
        self._key = key
        self._problem: object = None

    @property
    def path(self) -> Path:
        """The file the token is read from."""
        return self._path

    def __call__(self) -> str:
        with self._lock:
            try:
                key = _file_key(self._path)
            except OSError as exc:
                self._warn("missing", exc)
                return self._token
            if key != self._key:
                self._key = key
                try:
                    self._token = _read_token(self._path)
                except (OSError, ConfigurationError) as exc:
                    self._warn(key, exc)
                    return self._token
                self._problem = None
                log.info("oxide_token_reloaded", path=str(self._path))
            return self._token

    def _warn(self, problem: object, exc: Exception) -> None:
        """Log a reload failure once per distinct problem (not on every request)."""
        if problem == self._problem:
            return
        self._problem = problem
        log.warning(
            "oxide_token_reload_failed",
            path=str(self._path),
            error=type(exc).__name__,
            detail=_safe_detail(exc),
        )

    def __repr__(self) -> str:
        return f"FileToken({str(self._path)!r})"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class OxideCredentials:
    """Where and how to reach the Oxide API. ``source`` says where the settings came from, for
    logs; the token is only reachable by calling ``token`` and shows in no repr or str."""

    host: str
    project: str
    token: TokenProvider = field(repr=False, compare=False)
    ca_file: Path | None
    source: str
    warnings: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.host} project {self.project} ({self.source})"


def load_credentials(
    env: Mapping[str, str], config_dir: Path | None = None, *, require_project: bool = True
) -> OxideCredentials:
    """Resolve the credentials from ``env`` (and, for profiles, from ``config_dir``).

    Raises ``ConfigurationError`` naming the variable or file to set when something is missing
    or contradictory.
    """
    host, token, source = _host_and_token(env, config_dir)
    warnings: tuple[str, ...] = ()
    if source.startswith("profile "):
        directory = config_dir if config_dir is not None else default_config_dir(env)
        problem = file_mode_problem(directory / "credentials.toml")
        if problem is not None:
            log.warning("oxide_credentials_file_not_private", problem=problem)
            warnings = (problem,)
    project = _get(env, OXIDE_PROJECT)
    if project is None:
        if require_project:
            raise ConfigurationError(
                f"{OXIDE_PROJECT} is not set: set it to the Oxide project (name or ID) that holds "
                "the cluster's instances and disks"
            )
        project = ""
    return OxideCredentials(
        host=host,
        project=project,
        token=token,
        ca_file=_ca_file(env),
        source=source,
        warnings=warnings,
    )


_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)


def file_mode_problem(path: Path) -> str | None:
    """Why a file holding a token is not private enough (group or others may read or write it),
    or None. The Oxide CLI and ssh warn or refuse likewise."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None
    if mode & 0o077 == 0:
        return None
    return (
        f"{path} holds an Oxide token and is readable or writable by group or others "
        f"(mode {mode:04o}): run chmod 600 {path}"
    )


def normalize_host(host: str, *, origin: str = OXIDE_HOST) -> str:
    """The API's base URL: ``http(s)://HOST[:PORT]``, no trailing slash.

    As in Oxide's SDKs a value without a scheme gets ``https://``, but only when it is plainly a
    host (a dotted name, ``localhost``, or an IP address, with an optional port), so that a value
    like ``not-a-url`` is refused at start instead of failing every request later. Refused too:
    other schemes, paths, queries, and ``user:password@`` (never echoed back: the message shows
    the value without it). Nothing is resolved here.
    """
    value = host.strip()
    scheme_given = "://" in value
    candidate = value if scheme_given else f"https://{value}"
    parts = urlsplit(candidate)
    shown = _without_userinfo(value)
    expected = "expected https://HOST[:PORT], for example https://oxide.sys.example.com"
    if "@" in parts.netloc:
        raise ConfigurationError(
            f"{origin}: {shown!r} carries a user name or password (user:password@), which the "
            f"driver never sends nor logs: remove it; the token goes in {OXIDE_TOKEN} or a "
            "profile"
        )
    problem = _url_problem(parts, scheme_given)
    if problem:
        raise ConfigurationError(
            f"{origin}: {shown!r} is not an Oxide API URL ({problem}); {expected}"
        )
    netloc = parts.netloc.lower()
    return f"{parts.scheme.lower()}://{netloc}"


def _url_problem(parts: SplitResult, scheme_given: bool) -> str | None:
    if parts.scheme.lower() not in ("http", "https"):
        return f"scheme {parts.scheme!r}: only http and https"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return "a path, query or fragment is not allowed"
    try:
        port = parts.port
    except ValueError:
        return "the port is not a number from 1 to 65535"
    if port == 0:
        return "the port is not a number from 1 to 65535"
    name = parts.hostname or ""
    if not name:
        return "no host"
    if _is_ip(name):
        return None
    if not _HOSTNAME_RE.match(name):
        return f"{name!r} is not a host name"
    if not scheme_given and "." not in name and name != "localhost":
        return "no scheme, and not a dotted host name"
    return None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _without_userinfo(value: str) -> str:
    scheme, sep, rest = value.partition("://")
    if not sep:
        scheme, rest = "", value
    netloc, slash, tail = rest.partition("/")
    if "@" in netloc:
        netloc = "<redacted>@" + netloc.rpartition("@")[2]
    return f"{scheme}{sep}{netloc}{slash}{tail}"


def check_token(token: str, origin: str) -> str:
    """The token without surrounding whitespace; refused (without showing it) when it is empty or
    holds characters an HTTP header cannot carry."""
    value = token.strip()
    if not value:
        raise ConfigurationError(f"{origin} is empty: it must hold an Oxide API token")
    if not all(33 <= ord(ch) <= 126 for ch in value):
        raise ConfigurationError(
            f"{origin} holds characters that cannot be sent in an HTTP header "
            "(spaces, control or non-ASCII characters); it must hold one Oxide API token"
        )
    return value


def default_config_dir(env: Mapping[str, str]) -> Path:
    """``$HOME/.config/oxide``, where the Oxide CLI keeps its files."""
    home = _get(env, "HOME")
    if home is None:
        raise ConfigurationError(
            "HOME is not set, so the Oxide config dir is unknown: set OXIDE_HOST and OXIDE_TOKEN"
        )
    return Path(home) / ".config" / "oxide"


# ---- the decision -----------------------------------------------------------------------------


def _host_and_token(
    env: Mapping[str, str], config_dir: Path | None
) -> tuple[str, TokenProvider, str]:
    host, token, profile, token_file = (
        _get(env, OXIDE_HOST),
        _get(env, OXIDE_TOKEN),
        _get(env, OXIDE_PROFILE),
        _get(env, TOKEN_FILE),
    )
    if host is not None and profile is not None:
        raise ConfigurationError(
            f"both {OXIDE_HOST} and {OXIDE_PROFILE} are set: set only one of them"
        )
    if token is not None and token_file is not None:
        raise ConfigurationError(f"both {OXIDE_TOKEN} and {TOKEN_FILE} are set: set only one")
    if token is not None or token_file is not None:
        given = OXIDE_TOKEN if token is not None else TOKEN_FILE
        if profile is not None:
            raise ConfigurationError(
                f"both {given} and {OXIDE_PROFILE} are set: use {OXIDE_HOST} with {given}, "
                f"or a profile alone"
            )
        if host is None:
            raise ConfigurationError(f"{given} is set but {OXIDE_HOST} is not: set {OXIDE_HOST}")
        if token is not None:
            return normalize_host(host), StaticToken(token, origin=OXIDE_TOKEN), _ENV_SOURCE
        path = Path(token_file or "")
        return normalize_host(host), FileToken(path), f"{OXIDE_HOST} and token file {path}"
    directory = config_dir if config_dir is not None else default_config_dir(env)
    if host is not None:
        return _profile_for_host(normalize_host(host), directory)
    name = profile if profile is not None else _default_profile(directory)
    return _profile(name, directory, OXIDE_PROFILE if profile is not None else "default-profile")


_ENV_SOURCE = f"environment ({OXIDE_HOST}, {OXIDE_TOKEN})"


def _profile_for_host(host: str, directory: Path) -> tuple[str, TokenProvider, str]:
    path = directory / "credentials.toml"
    profiles = _profiles(
        path,
        missing=f"{OXIDE_HOST} is set without {OXIDE_TOKEN}: set {OXIDE_TOKEN} (or {TOKEN_FILE}), "
        f"or add a profile with that host to {path}",
    )
    for name, entry in profiles.items():
        entry_host = entry.get("host")
        if isinstance(entry_host, str) and _same_host(entry_host, host):
            return _from_entry(name, entry, path)
    raise ConfigurationError(
        f"{OXIDE_HOST} is set but {OXIDE_TOKEN} is not, and no profile in {path} has host {host}: "
        f"set {OXIDE_TOKEN} (or {TOKEN_FILE})"
    )


def _profile(name: str, directory: Path, chosen_by: str) -> tuple[str, TokenProvider, str]:
    path = directory / "credentials.toml"
    profiles = _profiles(
        path, missing=f"profile {name!r} ({chosen_by}) was chosen, but {path} does not exist"
    )
    entry = profiles.get(name)
    if entry is None:
        raise ConfigurationError(
            f"profile {name!r} ({chosen_by}) is not in {path}: add [profile.{name}] or choose "
            f"another with {OXIDE_PROFILE}"
        )
    return _from_entry(name, entry, path)


def _from_entry(
    name: str, entry: Mapping[str, object], path: Path
) -> tuple[str, TokenProvider, str]:
    where = f"profile {name!r} in {path}"
    host, token = entry.get("host"), entry.get("token")
    if not isinstance(host, str) or not host.strip():
        raise ConfigurationError(f'{where} has no host: add host = "https://…"')
    if not isinstance(token, str):
        raise ConfigurationError(f"{where} has no token: run `oxide auth login` or add token")
    origin = f"the token of {where}"
    return normalize_host(host, origin=where), StaticToken(token, origin=origin), where


def _default_profile(directory: Path) -> str:
    path = directory / "config.toml"
    if not path.exists():
        raise ConfigurationError(
            f"no Oxide credentials: set {OXIDE_HOST} and {OXIDE_TOKEN} (or {TOKEN_FILE}), "
            f"or {OXIDE_PROFILE}, or default-profile in {path}"
        )
    name = _load_toml(path).get("default-profile")
    if not isinstance(name, str) or not name:
        raise ConfigurationError(
            f"{path} has no default-profile: set default-profile there, or set {OXIDE_PROFILE}, "
            f"or {OXIDE_HOST} and {OXIDE_TOKEN}"
        )
    return name


def _profiles(path: Path, *, missing: str) -> dict[str, Mapping[str, object]]:
    if not path.exists():
        raise ConfigurationError(missing)
    table = _load_toml(path).get("profile", {})
    if not isinstance(table, Mapping):
        raise ConfigurationError(f"{path}: 'profile' must be a table of [profile.NAME] sections")
    return {str(k): v for k, v in table.items() if isinstance(v, Mapping)}


def _load_toml(path: Path) -> dict[str, object]:
    try:
        return tomllib.loads(_read_small(path, MAX_CREDENTIALS_FILE))
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        # The decoder's message gives a position only, never the file's content.
        raise ConfigurationError(f"{path} is not valid TOML: {exc}") from None


def _ca_file(env: Mapping[str, str]) -> Path | None:
    value = _get(env, CA_FILE)
    if value is None:
        return None
    path = Path(value)
    if not path.is_file():
        raise ConfigurationError(f"{CA_FILE}: {path} is not a readable file (a PEM CA bundle)")
    return path


def _same_host(a: str, b: str) -> bool:
    try:
        return normalize_host(a) == normalize_host(b)
    except ConfigurationError:
        return False


def _get(env: Mapping[str, str], key: str) -> str | None:
    value = env.get(key)
    return value if value is not None and value.strip() else None


def _file_key(path: Path) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _read_token(path: Path) -> str:
    text = _read_small(path, MAX_TOKEN_FILE)
    return check_token(text, f"{TOKEN_FILE} {path}")


# A token is tens of characters; a credentials file with many profiles a few kilobytes.
MAX_TOKEN_FILE = 64 * 1024
MAX_CREDENTIALS_FILE = 1024 * 1024


def _read_small(path: Path, limit: int) -> str:
    """``files.read_small``, its refusals as ``ConfigurationError``."""
    try:
        return read_small(path, limit)
    except ValueError as exc:
        raise ConfigurationError(f"{exc}: not a token or profile") from None


def _safe_detail(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return str(exc)
