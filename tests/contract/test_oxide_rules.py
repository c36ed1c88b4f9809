"""``csi_oxide.contract.oxide_rules``: ``is_uuid`` answers exactly as ``uuid.UUID`` parses,
shortcuts
included (a name shorter than 32 characters, the canonical form)."""

from __future__ import annotations

import random
import uuid

import pytest

from csi_oxide.contract.oxide_rules import is_uuid


def _parses(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


CANONICAL = "0f2c4d6e-1234-4abc-9def-0123456789ab"


@pytest.mark.parametrize(
    "value",
    [
        CANONICAL,
        CANONICAL.upper(),
        CANONICAL.replace("-", ""),  # 32 hex digits
        "{" + CANONICAL + "}",
        "urn:uuid:" + CANONICAL,
        CANONICAL + "\n",
        CANONICAL[:-1],  # 35 characters, one digit short
        CANONICAL[:-1] + "\u0660",  # an Arabic-Indic zero: not a hex digit to the parser
        CANONICAL[:-1] + "g",
        "+" + CANONICAL.replace("-", "")[1:],  # int(..., 16) takes a sign
        "0f2c4d6e1234-4abc-9def-0123456789ab",  # dashes anywhere
        "csi-0123456789abcdef",  # a driver-made name: 20 characters
        "a" * 31,
        "a" * 32,
        "-" * 40,
        "",
    ],
)
def test_is_uuid_is_the_parsers_answer(value: str) -> None:
    assert is_uuid(value) is _parses(value)


def test_is_uuid_agrees_with_the_parser_on_random_strings() -> None:
    rng = random.Random(18)  # noqa: S311 - test strings, not secrets
    alphabet = "0123456789abcdefABCDEF-{}:urnid_+ \n\u0660\uff41"
    for _ in range(20_000):
        value = "".join(rng.choice(alphabet) for _ in range(rng.choice((20, 31, 32, 33, 36, 38))))
        assert is_uuid(value) is _parses(value), value
    for _ in range(200):
        value = str(uuid.UUID(int=rng.getrandbits(128)))
        assert is_uuid(value) and is_uuid(value.upper()) and is_uuid(value.replace("-", ""))
