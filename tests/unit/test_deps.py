"""Unit tests for batchq.api.deps (API key authentication and the X-On-Behalf-Of header)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from batchq.api.deps import account_of, authenticate, check_user
from batchq.errors import AuthenticationFailed, InvalidRequest
from batchq.storage.apikeys import ApiKey


@dataclass
class FakeSettings:
    api_keys: list[str] = field(default_factory=lambda: ["sk-alpha", "sk-beta"])


@dataclass
class FakeKeys:
    """In-memory stand-in for the managed-key store."""

    known: dict[str, ApiKey] = field(default_factory=dict)

    def lookup(self, secret: str) -> ApiKey | None:
        return self.known.get(secret)


@dataclass
class FakeRuntime:
    settings: FakeSettings = field(default_factory=FakeSettings)
    apikeys: FakeKeys = field(default_factory=FakeKeys)


def auth(header: str | None, keys: list[str] | None = None) -> str:
    rt: Any = FakeRuntime(FakeSettings(keys) if keys is not None else FakeSettings())
    return authenticate(rt, header)


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Bearer    "])
def test_missing_key_fails(header: str | None) -> None:
    with pytest.raises(AuthenticationFailed) as info:
        auth(header)
    assert info.value.status_code == 401
    assert "Missing" in info.value.message


@pytest.mark.parametrize("header", ["Basic sk-alpha", "Token sk-alpha", "sk-alpha", "Bearer:sk-alpha"])
def test_wrong_scheme_fails(header: str) -> None:
    with pytest.raises(AuthenticationFailed):
        auth(header)


@pytest.mark.parametrize("header", ["Bearer sk-gamma", "Bearer sk-alph", "Bearer sk-alpha2", "Bearer SK-ALPHA"])
def test_wrong_key_fails(header: str) -> None:
    with pytest.raises(AuthenticationFailed) as info:
        auth(header)
    assert "Incorrect" in info.value.message


def test_no_configured_keys_rejects_everything() -> None:
    with pytest.raises(AuthenticationFailed):
        auth("Bearer sk-alpha", keys=[])


def test_right_key_gives_a_stable_account() -> None:
    first = auth("Bearer sk-alpha")
    assert first == auth("Bearer sk-alpha")
    assert first == account_of("sk-alpha")
    assert first.startswith("key_")
    assert "sk-alpha" not in first


@pytest.mark.parametrize("header", ["bearer sk-alpha", "BEARER sk-alpha", "Bearer  sk-alpha ", "Bearer sk-alpha\t"])
def test_scheme_is_case_insensitive_and_key_is_trimmed(header: str) -> None:
    assert auth(header) == account_of("sk-alpha")


def test_different_keys_give_different_accounts() -> None:
    assert auth("Bearer sk-alpha") != auth("Bearer sk-beta")


def test_account_does_not_depend_on_key_order() -> None:
    assert auth("Bearer sk-beta", keys=["sk-beta", "sk-alpha"]) == auth("Bearer sk-beta")


def test_check_user_none_passes() -> None:
    assert check_user(None) is None


@pytest.mark.parametrize("value", ["u", "user-42", "a" * 150, "Jane Doe <jane@example.com>", "~!@#$%^&()"])
def test_check_user_accepts_printable_ascii_up_to_150(value: str) -> None:
    assert check_user(value) == value


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("a" * 151, id="151-chars"),
        pytest.param("", id="empty"),
        pytest.param("   ", id="spaces"),
        pytest.param("*", id="star"),
        pytest.param(" * ", id="padded-star"),
        pytest.param("josé", id="non-ascii"),
        pytest.param("用户", id="cjk"),
        pytest.param("a\nb", id="newline"),
        pytest.param("a\tb", id="tab"),
        pytest.param("a\x00b", id="nul"),
        pytest.param("a\x7fb", id="del"),
        pytest.param("a\r\nX-Evil: 1", id="header-injection"),
    ],
)
def test_check_user_rejects_with_param_x_on_behalf_of(value: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        check_user(value)
    assert info.value.param == "X-On-Behalf-Of"
    assert info.value.status_code == 400


def test_a_managed_key_authenticates_as_its_own_account() -> None:
    record = ApiKey(id="key_0123456789abcdef", name="ci", created_at=0, prefix="sk-abcd")
    rt: Any = FakeRuntime(apikeys=FakeKeys({"sk-managed": record}))
    assert authenticate(rt, "Bearer sk-managed") == "acct_0123456789abcdef"
    with pytest.raises(AuthenticationFailed):
        authenticate(rt, "Bearer sk-unknown")
