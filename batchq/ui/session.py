"""The dashboard's session: a signed, HttpOnly, SameSite=Strict cookie.

The cookie holds the SHA-256 of the API key (never the key), the on-behalf-of identity and a CSRF
token, signed with ``BATCHQ_UI_SECRET`` and valid for ``MAX_AGE_S``. Every request checks the digest
again, so a revoked managed key (or a key removed from ``BATCHQ_API_KEYS``) signs its sessions out.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from functools import cache

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

from batchq.domain.models import Owner
from batchq.runtime import Runtime

COOKIE = "batchq_ui"
MAX_AGE_S = 12 * 3600
PATH = "/ui"


@dataclass(frozen=True)
class Session:
    csrf: str
    digest: str | None = None  # SHA-256 of the signed-in key; None: not signed in
    user: str | None = None  # the on-behalf-of identity


@dataclass(frozen=True)
class Identity:
    owner: Owner
    admin: bool
    session: Session


class Sessions:
    def __init__(self, secret: str) -> None:
        self._signer = URLSafeTimedSerializer(secret, salt="batchq-ui-session")

    def read(self, request: Request) -> Session | None:
        raw = request.cookies.get(COOKIE)
        if not raw:
            return None
        try:
            data = self._signer.loads(raw, max_age=MAX_AGE_S)
        except BadSignature:
            return None
        return Session(str(data["c"]), data.get("d"), data.get("u")) if isinstance(data, dict) else None

    def write(self, response: Response, session: Session, secure: bool) -> None:
        value = self._signer.dumps({"c": session.csrf, "d": session.digest, "u": session.user})
        response.set_cookie(
            COOKIE, value, max_age=MAX_AGE_S, path=PATH, httponly=True, samesite="strict", secure=secure
        )


def new_session(digest: str | None = None, user: str | None = None) -> Session:
    return Session(secrets.token_urlsafe(24), digest, user)


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def csrf_ok(session: Session | None, given: object) -> bool:
    return session is not None and isinstance(given, str) and hmac.compare_digest(session.csrf, given)


def identify(rt: Runtime, session: Session | None) -> Identity | None:
    """Who a signed-in session acts as, checked against the keys as they are now."""
    if session is None or session.digest is None:
        return None
    s = rt.settings
    if session.digest in _digests(tuple(s.api_keys)):
        account, admin = "key_" + session.digest[:24], False  # batchq.api.deps.account_of, from the digest
    else:
        managed = rt.apikeys.lookup_digest(session.digest)
        if managed is None:
            return None
        account, admin = managed.account, managed.admin
    admin = admin or session.digest in _digests(tuple(s.admin_keys))
    return Identity(Owner(account, session.user), admin, session)


@cache
def _digests(known: tuple[str, ...]) -> frozenset[str]:
    return frozenset(key_digest(k) for k in known)
