"""Idempotent creates, the pure part: key validation, the caller's scope, the request digest,
and what to do with a key already seen. No I/O (the Redis side is ``batchq.storage.idempotency``).

A client sends ``Idempotency-Key: <key>`` on a create. The key is *scoped* to the caller (the API
key's account and the ``X-On-Behalf-Of`` user), so two tenants never collide. The request is
reduced to a *digest* (method, operation path without its prefix, and its meaningful content);
the same key with another digest is a reused key (409), with the same digest a replay.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

import orjson

from batchq.domain.models import Owner
from batchq.errors import Conflict, InProgress, InvalidRequest

HEADER = "Idempotency-Key"
MAX_KEY_CHARS = 255
TTL_S = 24 * 3600  # how long a key's answer is replayed


class Seen(StrEnum):
    """What a key's stored record says about the request now arriving with it."""

    NEW = "new"  # the key was free: this request now holds it
    REPLAY = "replay"  # the same request already has an answer
    RUNNING = "running"  # the same request is being answered right now
    REUSED = "reused"  # the key belongs to a different request


@dataclass(frozen=True)
class Answer:
    """A stored answer to replay: the status code and the JSON body, as sent the first time."""

    status: int
    body: bytes


def check_key(value: str | None) -> str | None:
    """The key, when present and valid: 1 to 255 printable ASCII characters."""
    if value is None:
        return None
    printable = all(0x20 <= ord(c) < 0x7F for c in value)
    if not (1 <= len(value) <= MAX_KEY_CHARS) or not printable or not value.strip():
        raise InvalidRequest(
            f"{HEADER} must be 1 to {MAX_KEY_CHARS} printable ASCII characters.",
            param=HEADER,
            code="invalid_idempotency_key",
        )
    return value


def scope(owner: Owner, key: str) -> str:
    """Where a key lives: a digest of (account, user, key), unambiguous whatever the user holds."""
    return hashlib.sha256(orjson.dumps([owner.account, owner.user or "", key])).hexdigest()


def request_digest(method: str, path: str, parts: Iterable[bytes]) -> str:
    """A digest of what makes two requests the same: method, operation path and content parts."""
    h = hashlib.sha256()
    for part in (method.upper().encode(), path.encode(), *parts):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


def json_content(body: object) -> bytes:
    """A JSON body's meaningful content: the same object whatever its key order or spacing."""
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def form_content(fields: dict[str, str], filename: str | None, file_sha256: str | None) -> list[bytes]:
    """A multipart body's meaningful content: its text fields, its file's name and its bytes' digest."""
    return [json_content(fields), (filename or "").encode(), (file_sha256 or "").encode()]


def judge(stored_digest: str | None, answer: Answer | None, digest: str) -> Seen:
    """What a request with ``digest`` meets in a key's record (``None``: the key was free)."""
    if stored_digest is None:
        return Seen.NEW
    if stored_digest != digest:
        return Seen.REUSED
    return Seen.RUNNING if answer is None else Seen.REPLAY


def is_final(status: int) -> bool:
    """Whether an answer is kept for replay: successes and client errors, except those a retry may
    change (429: over a limit for now). A 5xx is never final: the client should retry."""
    return status < 500 and status != 429


def reused() -> Conflict:
    return Conflict(
        f"This {HEADER} was already used with a different request; use a new key for a new request.",
        param=HEADER,
        code="idempotency_key_reused",
    )


def in_progress(retry_after: int = 1) -> InProgress:
    return InProgress(
        f"A request with this {HEADER} is still being processed; retry shortly.",
        retry_after=retry_after,
        param=HEADER,
        code="idempotency_request_in_progress",
    )
