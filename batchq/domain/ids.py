"""Random, unguessable identifiers (128 bits each)."""

from __future__ import annotations

import secrets


def new_batch_id() -> str:
    return "batch_" + secrets.token_hex(16)


def new_file_id() -> str:
    return "file-" + secrets.token_hex(16)


def new_request_id() -> str:
    return "batch_req_" + secrets.token_hex(16)


def looks_like(prefix: str, value: str) -> bool:
    """True when ``value`` is ``prefix`` followed by 32 lowercase hex digits."""
    body = value[len(prefix) :]
    return value.startswith(prefix) and len(body) == 32 and all(c in "0123456789abcdef" for c in body)


def new_upload_id() -> str:
    return "upload_" + secrets.token_hex(16)


def new_part_id() -> str:
    return "part_" + secrets.token_hex(16)
