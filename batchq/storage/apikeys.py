"""Managed API keys: only a SHA-256 digest of each key is stored, never the key itself.

A key is ``sk-`` followed by 43 URL-safe characters (256 random bits). It is looked up by its
digest, so checking a presented key is one O(1) Redis read whose timing says nothing about the
stored keys; revoking deletes the digest, so the next request with it gets 401.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Any

import orjson
import redis
from pydantic import BaseModel

from batchq.storage import keys, schema

MAX_WEIGHT = 1000.0


class ApiKey(BaseModel):
    id: str
    name: str
    created_at: int
    prefix: str  # the first characters of the key, to recognise it in a list
    weight: float = 1.0  # the key's share of the workers against other keys with work (the scheduler's)
    admin: bool = False  # sees every tenant on the dashboard's operators page

    @property
    def account(self) -> str:
        return "acct_" + self.id.removeprefix("key_")


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiKeyStore:
    def __init__(self, client: redis.Redis) -> None:
        self.r = client

    def create(self, name: str, weight: float = 1.0, admin: bool = False) -> tuple[ApiKey, str]:
        """A new key: returns its record and the key itself, which is shown once and not kept."""
        _check_weight(weight)
        secret = "sk-" + secrets.token_urlsafe(32)
        record = ApiKey(
            id="key_" + secrets.token_hex(8), name=name, created_at=int(time.time()), prefix=secret[:7], weight=weight,
            admin=admin,
        )  # fmt: skip
        self._save(record, digest(secret))
        return record, secret

    def set_weight(self, key_id: str, weight: float) -> ApiKey | None:
        """Change a key's weight; the scheduler uses it from its next grant on."""
        _check_weight(weight)
        raw = self.r.hget(keys.API_KEY_INDEX, key_id)
        if raw is None:
            return None
        stored = orjson.loads(raw)
        record = ApiKey.model_validate(_checked(stored) | {"weight": weight})
        self._save(record, stored["digest"])
        return record

    def _save(self, record: ApiKey, key_digest: str) -> None:
        pipe = self.r.pipeline()
        fields = record.model_dump() | schema.written()
        pipe.set(keys.api_key(key_digest), orjson.dumps(fields))
        pipe.hset(keys.API_KEY_INDEX, record.id, orjson.dumps({"digest": key_digest} | fields))
        pipe.hset(keys.SCHED_WEIGHTS, record.account, record.weight)  # what the scheduler reads
        pipe.execute()

    def lookup(self, secret: str) -> ApiKey | None:
        return self.lookup_digest(digest(secret))

    def lookup_digest(self, key_digest: str) -> ApiKey | None:
        """The key whose SHA-256 is ``key_digest`` (the dashboard's session holds only the digest)."""
        raw = self.r.get(keys.api_key(key_digest))
        return ApiKey.model_validate(_checked(orjson.loads(raw))) if raw else None

    def list(self) -> list[ApiKey]:
        stored = (_checked(orjson.loads(v)) for v in self.r.hvals(keys.API_KEY_INDEX))
        return sorted((ApiKey.model_validate(fields) for fields in stored), key=_created)

    def revoke(self, key_id: str) -> bool:
        raw = self.r.hget(keys.API_KEY_INDEX, key_id)
        if raw is None:
            return False
        pipe = self.r.pipeline()
        pipe.delete(keys.api_key(orjson.loads(raw)["digest"]))
        pipe.hdel(keys.API_KEY_INDEX, key_id)
        pipe.execute()
        return True


def _checked(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored key record, once its schema is known to this code."""
    schema.check(stored.get(schema.FIELD), f"api key {stored.get('id', '')}")
    return stored


def _check_weight(weight: float) -> None:
    if not 0 < weight <= MAX_WEIGHT:
        raise ValueError(f"a weight must be above 0 and at most {MAX_WEIGHT:g}; got {weight:g}")


def _created(key: ApiKey) -> int:
    return key.created_at
