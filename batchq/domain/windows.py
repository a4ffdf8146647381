"""Completion windows (``"24h"``, ``"90m"``, ``"2d"`` …), file expiry policies and batch metadata rules."""

from __future__ import annotations

import re

from batchq.errors import InvalidRequest

_WINDOW = re.compile(r"^([1-9][0-9]{0,6})([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

MIN_EXPIRY_S = 3600  # OpenAI's bounds for expires_after / output_expires_after
MAX_EXPIRY_S = 30 * 86400
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512


def window_seconds(window: str) -> int:
    """Seconds in a window like ``"24h"``; raises ``InvalidRequest`` for anything else."""
    match = _WINDOW.fullmatch(window) if isinstance(window, str) else None
    if match is None:
        raise InvalidRequest(
            f"Invalid completion_window {window!r}: use a duration such as '24h', '90m' or '2d'.",
            param="completion_window",
            code="invalid_completion_window",
        )
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def checked_window(window: str, minimum: str, maximum: str) -> int:
    """Seconds in ``window`` when it lies within [minimum, maximum]."""
    seconds = window_seconds(window)
    if not window_seconds(minimum) <= seconds <= window_seconds(maximum):
        raise InvalidRequest(
            f"completion_window must be between {minimum} and {maximum}; got {window!r}.",
            param="completion_window",
            code="invalid_completion_window",
        )
    return seconds


def expiry_seconds(anchor: object, seconds: object, param: str) -> int:
    """``{"anchor": "created_at", "seconds": n}``: seconds after creation, between 1 hour and 30 days."""
    if anchor != "created_at":
        raise InvalidRequest(f"{param}[anchor] must be 'created_at'; got {anchor!r}.", param=f"{param}[anchor]")
    value = _integer(seconds)
    if value is None or not MIN_EXPIRY_S <= value <= MAX_EXPIRY_S:
        message = f"{param}[seconds] must be an integer from {MIN_EXPIRY_S} (1 hour) to {MAX_EXPIRY_S} (30 days)"
        raise InvalidRequest(f"{message}; got {seconds!r}.", param=f"{param}[seconds]")
    return value


def _integer(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 12:
        return int(value)
    return None


def check_metadata(metadata: object) -> dict[str, str] | None:
    """Metadata as OpenAI allows it: at most 16 string pairs, keys ≤ 64, values ≤ 512 chars."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise _bad_metadata("metadata must be an object of string keys and string values.")
    if len(metadata) > MAX_METADATA_PAIRS:
        raise _bad_metadata(f"metadata may hold at most {MAX_METADATA_PAIRS} pairs.")
    for key, value in metadata.items():
        _check_pair(key, value)
    return dict(metadata)


def _check_pair(key: object, value: object) -> None:
    if not isinstance(key, str) or not isinstance(value, str):
        raise _bad_metadata("metadata keys and values must be strings.")
    if len(key) > MAX_METADATA_KEY:
        raise _bad_metadata(f"metadata keys may be at most {MAX_METADATA_KEY} characters.")
    if len(value) > MAX_METADATA_VALUE:
        raise _bad_metadata(f"metadata values may be at most {MAX_METADATA_VALUE} characters.")


def _bad_metadata(message: str) -> InvalidRequest:
    return InvalidRequest(message, param="metadata", code="invalid_metadata")
