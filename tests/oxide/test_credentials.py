"""Credential discovery: environment, profiles, token file rotation, and secrecy of the token."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from csi_oxide.errors import ConfigurationError
from csi_oxide.oxide.credentials import (
    FileToken,
    StaticToken,
    default_config_dir,
    load_credentials,
    normalize_host,
)

TOKEN = "oxide-token-5ec2e7a11c0ffee5ec2e7"
OTHER = "oxide-token-0000feedface0000"


def write_profiles(config_dir: Path, *, default: str | None = "rack1") -> None:
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "credentials.toml").write_text(
        f"""
[profile.rack1]
host = "oxide.rack1.example.com"
token = "{TOKEN}"
user = "00000000-0000-4000-8000-000000000001"

[profile.rack2]
host = "https://rack2.example.com:8443/"
token = "{OTHER}"
user = "00000000-0000-4000-8000-000000000002"
"""
    )
    if default is not None:
        (config_dir / "config.toml").write_text(f'default-profile = "{default}"\n')


def test_host_and_token_from_the_environment(tmp_path: Path) -> None:
    creds = load_credentials(
        {"OXIDE_HOST": "oxide.example.com", "OXIDE_TOKEN": TOKEN, "OXIDE_PROJECT": "k8s"},
        tmp_path,
    )
    assert creds.host == "https://oxide.example.com"
    assert creds.project == "k8s"
    assert creds.token() == TOKEN
    assert creds.ca_file is None
    assert "OXIDE_TOKEN" in creds.source


def test_environment_wins_over_files_without_reading_them(tmp_path: Path) -> None:
    (tmp_path / "credentials.toml").write_text("this is [not toml")
    creds = load_credentials(
        {"OXIDE_HOST": "http://127.0.0.1:1", "OXIDE_TOKEN": TOKEN, "OXIDE_PROJECT": "p"},
        tmp_path,
    )
    assert creds.host == "http://127.0.0.1:1"


def test_default_profile_from_config_toml(tmp_path: Path) -> None:
    write_profiles(tmp_path)
    creds = load_credentials({"OXIDE_PROJECT": "p"}, tmp_path)
    assert creds.host == "https://oxide.rack1.example.com"
    assert creds.token() == TOKEN
    assert "rack1" in creds.source


def test_oxide_profile_chooses_the_profile(tmp_path: Path) -> None:
    write_profiles(tmp_path)
    creds = load_credentials({"OXIDE_PROFILE": "rack2", "OXIDE_PROJECT": "p"}, tmp_path)
    assert creds.host == "https://rack2.example.com:8443"
    assert creds.token() == OTHER


def test_host_alone_finds_the_profile_with_that_host(tmp_path: Path) -> None:
    write_profiles(tmp_path, default="rack1")
    creds = load_credentials(
        {"OXIDE_HOST": "https://rack2.example.com:8443", "OXIDE_PROJECT": "p"}, tmp_path
    )
    assert creds.token() == OTHER


def test_config_dir_defaults_to_home(tmp_path: Path) -> None:
    write_profiles(tmp_path / ".config" / "oxide")
    assert default_config_dir({"HOME": str(tmp_path)}) == tmp_path / ".config" / "oxide"
    creds = load_credentials({"HOME": str(tmp_path), "OXIDE_PROJECT": "p"})
    assert creds.token() == TOKEN


@pytest.mark.parametrize(
    ("env", "match"),
    [
        (
            {"OXIDE_HOST": "h.example", "OXIDE_PROFILE": "rack1", "OXIDE_TOKEN": TOKEN},
            "both OXIDE_HOST and OXIDE_PROFILE",
        ),
        ({"OXIDE_TOKEN": TOKEN}, "OXIDE_TOKEN is set but OXIDE_HOST is not"),
        ({"OXIDE_TOKEN": TOKEN, "OXIDE_PROFILE": "rack1"}, "both OXIDE_TOKEN and OXIDE_PROFILE"),
        ({"OXIDE_HOST": "h.example", "OXIDE_TOKEN": "  "}, "OXIDE_HOST is set without OXIDE_TOKEN"),
        ({"OXIDE_HOST": "h.example", "OXIDE_TOKEN": "a b"}, "cannot be sent in an HTTP header"),
        ({"OXIDE_HOST": "ftp://h", "OXIDE_TOKEN": TOKEN}, "not an Oxide API URL"),
        ({"OXIDE_HOST": "https://h/api", "OXIDE_TOKEN": TOKEN}, "not an Oxide API URL"),
        ({"OXIDE_PROFILE": "nope"}, "profile 'nope' .*OXIDE_PROFILE.* does not exist"),
        ({}, "no Oxide credentials: set OXIDE_HOST and OXIDE_TOKEN"),
        (
            {"OXIDE_HOST": "h.example", "OXIDE_TOKEN": TOKEN, "CSI_OXIDE_TOKEN_FILE": "/x"},
            "both OXIDE_TOKEN and CSI_OXIDE_TOKEN_FILE",
        ),
        (
            {
                "OXIDE_HOST": "h.example",
                "OXIDE_TOKEN": TOKEN,
                "CSI_OXIDE_CA_FILE": "/nonexistent/ca",
            },
            "CSI_OXIDE_CA_FILE",
        ),
    ],
)
def test_missing_or_contradictory_settings_name_what_to_set(
    tmp_path: Path, env: dict[str, str], match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match) as info:
        load_credentials({"OXIDE_PROJECT": "p", **env}, tmp_path)
    assert TOKEN not in str(info.value)


def test_project_is_required_unless_told_otherwise(tmp_path: Path) -> None:
    env = {"OXIDE_HOST": "h.example", "OXIDE_TOKEN": TOKEN}
    with pytest.raises(ConfigurationError, match="OXIDE_PROJECT is not set"):
        load_credentials(env, tmp_path)
    assert load_credentials(env, tmp_path, require_project=False).project == ""


def test_profile_errors_name_the_file(tmp_path: Path) -> None:
    write_profiles(tmp_path)
    with pytest.raises(
        ConfigurationError, match=r"profile 'rack9' .* is not in .*credentials\.toml"
    ):
        load_credentials({"OXIDE_PROFILE": "rack9", "OXIDE_PROJECT": "p"}, tmp_path)
    (tmp_path / "credentials.toml").write_text(
        f'[profile.x]\nhost = "h.example"\ntoken = "{TOKEN}\n'
    )
    with pytest.raises(ConfigurationError, match=r"credentials\.toml is not valid TOML") as info:
        load_credentials({"OXIDE_PROFILE": "x", "OXIDE_PROJECT": "p"}, tmp_path)
    assert TOKEN not in str(info.value)
    (tmp_path / "credentials.toml").write_text('[profile.x]\nhost = "h.example"\n')
    with pytest.raises(ConfigurationError, match=r"profile 'x' .* has no token"):
        load_credentials({"OXIDE_PROFILE": "x", "OXIDE_PROJECT": "p"}, tmp_path)
    (tmp_path / "config.toml").write_text("other = 1\n")
    with pytest.raises(ConfigurationError, match="has no default-profile"):
        load_credentials({"OXIDE_PROJECT": "p"}, tmp_path)


def test_host_without_a_matching_profile(tmp_path: Path) -> None:
    write_profiles(tmp_path)
    with pytest.raises(
        ConfigurationError, match=r"no profile in .* has host https://other.example"
    ):
        load_credentials({"OXIDE_HOST": "other.example", "OXIDE_PROJECT": "p"}, tmp_path)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("oxide.example.com", "https://oxide.example.com"),
        ("oxide.example.com:444/", "https://oxide.example.com:444"),
        ("HTTP://127.0.0.1:8080", "http://127.0.0.1:8080"),
        (" https://a.b ", "https://a.b"),
    ],
)
def test_normalize_host(given: str, expected: str) -> None:
    assert normalize_host(given) == expected


def test_ca_file_is_passed_on(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    env = {"OXIDE_HOST": "h.example", "OXIDE_TOKEN": TOKEN, "OXIDE_PROJECT": "p"}
    assert load_credentials({**env, "CSI_OXIDE_CA_FILE": str(ca)}, tmp_path).ca_file == ca


def test_token_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "oxide-token"
    path.write_text(TOKEN + "\n")
    creds = load_credentials(
        {"OXIDE_HOST": "h.example", "CSI_OXIDE_TOKEN_FILE": str(path), "OXIDE_PROJECT": "p"},
        tmp_path,
    )
    assert creds.token() == TOKEN
    assert str(path) in creds.source
    # A Secret update replaces the file (new inode) rather than writing it in place.
    replacement = tmp_path / "oxide-token.new"
    replacement.write_text(OTHER)
    os.replace(replacement, path)
    assert creds.token() == OTHER


def test_token_file_keeps_the_last_good_token_while_the_file_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "oxide-token"
    path.write_text(TOKEN)
    provider = FileToken(path)
    path.unlink()
    with capture_logs() as logs:
        assert provider() == TOKEN
    assert [e["event"] for e in logs] == ["oxide_token_reload_failed"]
    path.write_text("")
    with capture_logs() as logs:
        assert provider() == TOKEN
    assert "empty" in str(logs[0]["detail"])
    path.write_text(OTHER)
    assert provider() == OTHER


def test_token_file_must_exist_and_hold_a_token_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="CSI_OXIDE_TOKEN_FILE: cannot read"):
        FileToken(tmp_path / "absent")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigurationError, match="is empty"):
        FileToken(empty)


def test_the_token_is_in_no_repr_or_str(tmp_path: Path) -> None:
    path = tmp_path / "tok"
    path.write_text(TOKEN)
    env = {"OXIDE_HOST": "h.example", "OXIDE_TOKEN": TOKEN, "OXIDE_PROJECT": "p"}
    by_env = load_credentials(env, tmp_path)
    env_file = {"OXIDE_HOST": "h.example", "CSI_OXIDE_TOKEN_FILE": str(path), "OXIDE_PROJECT": "p"}
    by_file = load_credentials(env_file, tmp_path)
    for obj in (by_env, by_file, by_env.token, by_file.token, StaticToken(TOKEN)):
        assert TOKEN not in repr(obj)
        assert TOKEN not in str(obj)
    assert by_env.token() == TOKEN


def test_a_broken_token_file_is_reported_once_per_change(tmp_path: Path) -> None:
    path = tmp_path / "oxide-token"
    path.write_text(TOKEN)
    provider = FileToken(path)
    path.unlink()
    with capture_logs() as logs:
        for _ in range(3):
            assert provider() == TOKEN
    assert len(logs) == 1
    path.write_text(OTHER)
    with capture_logs() as logs:
        assert provider() == OTHER
    assert [e["event"] for e in logs] == ["oxide_token_reloaded"]


@pytest.mark.parametrize(
    ("given", "complaint"),
    [
        ("not-a-url", "not a dotted host name"),
        ("https://", "no host"),
        ("https://:443", "no host"),
        ("ftp://rack.example.com", "only http and https"),
        ("https://rack.example.com/api", "path"),
        ("https://rack.example.com?x=1", "path, query"),
        ("https://rack.example.com:99999", "port"),
        ("https://rack.example.com:0", "port"),
        ("https://rack_example!.com", "not a host name"),
    ],
)
def test_a_host_that_is_not_an_api_url_is_refused_at_start(given: str, complaint: str) -> None:
    env = {"OXIDE_HOST": given, "OXIDE_TOKEN": TOKEN, "OXIDE_PROJECT": "p"}
    with pytest.raises(ConfigurationError, match="OXIDE_HOST") as info:
        load_credentials(env, Path("/nonexistent"))
    assert complaint in str(info.value)
    assert "https://HOST[:PORT]" in str(info.value)


@pytest.mark.parametrize(
    "given", ["https://admin:hunter2@rack.example.com", "admin:hunter2@rack.example.com:443"]
)
def test_credentials_in_the_host_are_refused_and_never_echoed(given: str) -> None:
    env = {"OXIDE_HOST": given, "OXIDE_TOKEN": TOKEN, "OXIDE_PROJECT": "p"}
    with capture_logs() as logs, pytest.raises(ConfigurationError, match="user:password@") as info:
        load_credentials(env, Path("/nonexistent"))
    assert "hunter2" not in str(info.value)
    assert "admin" not in str(info.value)
    assert "hunter2" not in repr(logs)


def test_dotted_names_localhost_and_addresses_may_omit_the_scheme() -> None:
    assert normalize_host("localhost:12220") == "https://localhost:12220"
    assert normalize_host("10.0.0.5") == "https://10.0.0.5"
    assert normalize_host("[fd00::1]:443") == "https://[fd00::1]:443"
    assert normalize_host("https://oxide") == "https://oxide"  # with a scheme, any host name


@pytest.mark.parametrize(
    ("mode", "private"),
    [(0o600, True), (0o400, True), (0o640, False), (0o644, False), (0o602, False)],
)
def test_a_credentials_file_others_can_read_is_warned_about(
    tmp_path: Path, mode: int, private: bool
) -> None:
    write_profiles(tmp_path)
    (tmp_path / "credentials.toml").chmod(mode)
    with capture_logs() as logs:
        creds = load_credentials({"OXIDE_PROJECT": "p"}, tmp_path)
    warned = [e for e in logs if e["event"] == "oxide_credentials_file_not_private"]
    if private:
        assert creds.warnings == ()
        assert warned == []
    else:
        assert len(creds.warnings) == 1
        assert f"mode {mode:04o}" in creds.warnings[0]
        assert "chmod 600" in creds.warnings[0]
        assert len(warned) == 1
        assert TOKEN not in repr(logs)


def test_the_environment_route_has_no_file_to_warn_about(tmp_path: Path) -> None:
    write_profiles(tmp_path)
    (tmp_path / "credentials.toml").chmod(0o644)
    env = {"OXIDE_HOST": "rack.example.com", "OXIDE_TOKEN": TOKEN, "OXIDE_PROJECT": "p"}
    assert load_credentials(env, tmp_path).warnings == ()


def _read_in_a_thread(provider: FileToken) -> tuple[threading.Thread, list[str]]:
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(provider()), daemon=True)
    reader.start()
    reader.join(timeout=10)  # not a timing assertion: it stops a test that would hang
    return reader, got


def test_a_token_file_swapped_for_a_fifo_neither_hangs_nor_loses_the_token(
    tmp_path: Path,
) -> None:
    """The token is read on the event loop before each request: a FIFO behind the Secret's
    symlink would block the whole controller on the read (no writer ever comes)."""
    real = tmp_path / "token-v1"
    real.write_text(TOKEN)
    link = tmp_path / "oxide-token"
    link.symlink_to(real)
    provider = FileToken(link)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link.unlink()
    link.symlink_to(fifo)
    with capture_logs() as logs:
        reader, got = _read_in_a_thread(provider)
    if reader.is_alive():  # unblock the old behaviour's reader so the test process can end
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join()
    assert got == [TOKEN]
    assert [e["event"] for e in logs] == ["oxide_token_reload_failed"]
    assert "not a regular file" in str(logs[0]["detail"])


@pytest.mark.parametrize("target", ["/dev/zero", "huge"])
def test_a_token_file_that_never_ends_is_refused(tmp_path: Path, target: str) -> None:
    """A symlink to /dev/zero (or a file of megabytes) is read up to a small bound, not into
    memory whole."""
    if target == "huge":
        huge = tmp_path / "huge"
        huge.write_bytes(b"a" * (8 * 1024 * 1024))
        target = str(huge)
    link = tmp_path / "oxide-token"
    link.symlink_to(target)
    with pytest.raises(ConfigurationError, match=r"not a regular file|larger than"):
        FileToken(link)
