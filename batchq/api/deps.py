"""Request dependencies: the runtime, the task queue and the caller's identity."""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from batchq.domain.models import Owner
from batchq.errors import AuthenticationFailed, InvalidRequest
from batchq.runtime import Runtime, TaskQueue

PREFIXES = ("/v1", "/api/v1/llm")  # every route is served under both (an Idempotency-Key covers both)
MAX_USER_CHARS = 150
MAX_KEY_CHARS = 256


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def get_queue(request: Request) -> TaskQueue:
    queue: TaskQueue = request.app.state.queue
    return queue


def account_of(key: str) -> str:
    return "key_" + hashlib.sha256(key.encode()).hexdigest()[:24]


def authenticate(rt: Runtime, authorization: str | None) -> str:
    """The account of a valid ``Bearer`` key: a configured key (compared in constant time against
    every one) or a managed key (looked up by its SHA-256)."""
    scheme, _, key = (authorization or "").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise AuthenticationFailed("Missing API key: send 'Authorization: Bearer <key>'.")
    if _configured(rt.settings.api_keys, key):
        return account_of(key)
    managed = rt.apikeys.lookup(key) if len(key) <= MAX_KEY_CHARS else None
    if managed is None:
        raise AuthenticationFailed("Incorrect API key provided.")
    return managed.account


def _configured(known_keys: list[str], key: str) -> bool:
    given = hashlib.sha256(key.encode()).digest()
    matched = False
    for known in known_keys:
        matched |= hmac.compare_digest(hashlib.sha256(known.encode()).digest(), given)
    return matched


def check_user(value: str | None) -> str | None:
    if value is None:
        return None
    printable = all(0x20 <= ord(c) < 0x7F for c in value)
    if not (1 <= len(value) <= MAX_USER_CHARS) or not printable or value.strip() in ("", "*"):
        raise InvalidRequest(
            f"X-On-Behalf-Of must be 1 to {MAX_USER_CHARS} printable ASCII characters, not '*'.",
            param="X-On-Behalf-Of",
            code="invalid_header",
        )
    return value


bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer sk-…`.")


def get_owner(
    rt: Annotated[Runtime, Depends(get_runtime)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    x_on_behalf_of: Annotated[str | None, Header()] = None,
) -> Owner:
    header = f"{credentials.scheme} {credentials.credentials}" if credentials else None
    account = authenticate(rt, header)
    owner = Owner(account, check_user(x_on_behalf_of))
    rt.quotas.count_request(account)
    return owner


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
QueueDep = Annotated[TaskQueue, Depends(get_queue)]
OwnerDep = Annotated[Owner, Depends(get_owner)]
