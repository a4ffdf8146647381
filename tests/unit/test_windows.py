"""Unit tests for batchq.domain.windows (completion windows and metadata)."""

from __future__ import annotations

import pytest

from batchq.domain.windows import check_metadata, checked_window, expiry_seconds, window_seconds
from batchq.errors import InvalidRequest


@pytest.mark.parametrize(
    ("window", "seconds"),
    [("1s", 1), ("90m", 5400), ("24h", 86_400), ("2d", 172_800), ("9999999s", 9_999_999)],
)
def test_window_seconds_parses_durations(window: str, seconds: int) -> None:
    assert window_seconds(window) == seconds


@pytest.mark.parametrize(
    "window",
    ["", "24", "h", "0h", "01h", "24H", "24 h", " 24h", "1.5h", "-1h", "24w", "10000000s", "24hh", "１h"],
)
def test_window_seconds_rejects_other_strings(window: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        window_seconds(window)
    assert info.value.param == "completion_window"
    assert info.value.code == "invalid_completion_window"


def test_window_seconds_rejects_trailing_newline() -> None:
    with pytest.raises(InvalidRequest):
        window_seconds("24h\n")


@pytest.mark.parametrize("window", [None, 24, 24.0, ["24h"]])
def test_window_seconds_rejects_non_strings(window: object) -> None:
    with pytest.raises(InvalidRequest):
        window_seconds(window)  # type: ignore[arg-type]


@pytest.mark.parametrize(("window", "seconds"), [("1h", 3600), ("60m", 3600), ("24h", 86_400), ("7d", 604_800)])
def test_checked_window_accepts_windows_within_bounds_inclusive(window: str, seconds: int) -> None:
    assert checked_window(window, "1h", "7d") == seconds


@pytest.mark.parametrize("window", ["59m", "3599s", "8d", "169h"])
def test_checked_window_rejects_windows_outside_bounds(window: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        checked_window(window, "1h", "7d")
    assert info.value.param == "completion_window"
    assert info.value.code == "invalid_completion_window"


def test_checked_window_rejects_malformed_window() -> None:
    with pytest.raises(InvalidRequest):
        checked_window("soon", "1h", "7d")


def test_check_metadata_none_is_none() -> None:
    assert check_metadata(None) is None


def test_check_metadata_returns_a_copy() -> None:
    given = {"a": "b"}
    result = check_metadata(given)
    assert result == given
    assert result is not given


def test_check_metadata_accepts_the_limits_exactly() -> None:
    metadata = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}
    assert check_metadata(metadata) == metadata


def test_check_metadata_accepts_empty_dict() -> None:
    assert check_metadata({}) == {}


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param({str(i): "v" for i in range(17)}, id="17-pairs"),
        pytest.param({"k" * 65: "v"}, id="65-char-key"),
        pytest.param({"k": "v" * 513}, id="513-char-value"),
        pytest.param({"k": 1}, id="int-value"),
        pytest.param({"k": None}, id="null-value"),
        pytest.param({"k": ["v"]}, id="list-value"),
        pytest.param({1: "v"}, id="int-key"),
        pytest.param(["k", "v"], id="list"),
        pytest.param("k=v", id="string"),
        pytest.param(3, id="int"),
    ],
)
def test_check_metadata_rejects_with_param_metadata(metadata: object) -> None:
    with pytest.raises(InvalidRequest) as info:
        check_metadata(metadata)
    assert info.value.param == "metadata"
    assert info.value.code == "invalid_metadata"


@pytest.mark.parametrize(("seconds", "expected"), [(3600, 3600), ("7200", 7200), (2_592_000, 2_592_000)])
def test_expiry_seconds_accepts_an_hour_to_thirty_days(seconds: object, expected: int) -> None:
    assert expiry_seconds("created_at", seconds, "expires_after") == expected


@pytest.mark.parametrize(
    ("anchor", "seconds", "param"),
    [
        ("created_at", 3599, "expires_after[seconds]"),
        ("created_at", 2_592_001, "expires_after[seconds]"),
        ("created_at", True, "expires_after[seconds]"),
        ("created_at", "1e4", "expires_after[seconds]"),
        ("created_at", None, "expires_after[seconds]"),
        ("last_active_at", 3600, "expires_after[anchor]"),
    ],
)
def test_expiry_seconds_names_the_bad_field(anchor: object, seconds: object, param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        expiry_seconds(anchor, seconds, "expires_after")
    assert refused.value.param == param and refused.value.status_code == 400


def test_a_huge_digit_string_is_refused_not_a_crash() -> None:
    with pytest.raises(InvalidRequest):
        expiry_seconds("created_at", "9" * 5000, "output_expires_after")
