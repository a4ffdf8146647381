"""Request dependencies: the runtime, the task queue and the caller's identity."""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Header, Request

from batchq.domain.models import Owner
from batchq.errors import AuthenticationFailed, InvalidRequest
from batchq.runtime import Runtime, TaskQueue

MAX_USER_CHARS = 150


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def get_queue(request: Request) -> TaskQueue:
    queue: TaskQueue = request.app.state.queue
    return queue


def account_of(key: str) -> str:
    return "key_" + hashlib.sha256(key.encode()).hexdigest()[:24]


def authenticate(rt: Runtime, authorization: str | None) -> str:
    """The account of a valid ``Bearer`` key; compares in constant time against every key."""
    scheme, _, key = (authorization or "").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise AuthenticationFailed("Missing API key: send 'Authorization: Bearer <key>'.")
    given = hashlib.sha256(key.encode()).digest()
    matched = False
    for known in rt.settings.api_keys:
        matched |= hmac.compare_digest(hashlib.sha256(known.encode()).digest(), given)
    if not matched:
        raise AuthenticationFailed("Incorrect API key provided.")
    return account_of(key)


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


def get_owner(
    rt: Annotated[Runtime, Depends(get_runtime)],
    authorization: Annotated[str | None, Header()] = None,
    x_on_behalf_of: Annotated[str | None, Header()] = None,
) -> Owner:
    return Owner(authenticate(rt, authorization), check_user(x_on_behalf_of))


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
QueueDep = Annotated[TaskQueue, Depends(get_queue)]
OwnerDep = Annotated[Owner, Depends(get_owner)]
