"""Idempotency-Key records in Redis: who holds a key, and the answer to replay.

A key's record is one string, ``digest \\n token \\n status \\n body``, under ``keys.idempotency(scope)``:

- ``begin`` takes a free key with ``SET NX`` (status 0: being answered), for ``lock_s`` seconds, so
  of many concurrent requests with one key exactly one runs; a crashed API process frees it then;
- ``finish`` stores the answer for ``ttl_s`` (24 h), only while the record is still the caller's;
- ``release`` frees the key again (the request failed with a 5xx: the client may retry);
- ``look`` reads a record and judges the request against it (``batchq.domain.idempotency.judge``).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import redis

from batchq.domain.idempotency import TTL_S, Answer, Seen, judge
from batchq.storage import keys
from batchq.storage.lua import Call, Script

PENDING = 0

# The record is the caller's while its token matches: then store the answer (a.ttl) or free it.
SETTLE = """
local k, a = part('rec')
local raw = redis.call('GET', k.rec)
if not raw then return 0 end
local first = string.find(raw, '\\n', 1, true)
local second = string.find(raw, '\\n', first + 1, true)
if string.sub(raw, first + 1, second - 1) ~= a.token then return 0 end
if a.value then
  redis.call('SET', k.rec, a.value, 'EX', a.ttl)
else
  redis.call('DEL', k.rec)
end
return 1
"""


@dataclass(frozen=True)
class Claim:
    """A request's standing with its key: ``token`` when it holds the key, ``answer`` to replay."""

    seen: Seen
    token: str | None = None
    answer: Answer | None = None


class IdempotencyStore:
    def __init__(self, client: redis.Redis, lock_s: int = 300, ttl_s: int = TTL_S) -> None:
        self.r = client
        self.lock_s = lock_s
        self.ttl_s = ttl_s
        self._settle = Script(client, SETTLE)

    def begin(self, scope: str, digest: str) -> Claim:
        """Take the key if it is free; otherwise say what holds it."""
        token = secrets.token_hex(16)
        for _ in range(3):  # a record that expires between SET NX and GET: try again
            if self.r.set(keys.idempotency(scope), _record(digest, token, PENDING, b""), nx=True, ex=self.lock_s):
                return Claim(Seen.NEW, token)
            claim = self.look(scope, digest)
            if claim is not None:
                return claim
        return Claim(Seen.RUNNING)

    def look(self, scope: str, digest: str) -> Claim | None:
        """The request's standing with the key's record; ``None`` when there is no record."""
        raw = self.r.get(keys.idempotency(scope))
        if raw is None:
            return None
        stored, _, status, body = _parse(raw)
        answer = Answer(status, body) if status != PENDING else None
        return Claim(judge(stored, answer, digest), answer=answer)

    def finish(self, scope: str, token: str, digest: str, answer: Answer) -> bool:
        """Keep ``answer`` for replay; False when the key was no longer this request's."""
        value = _record(digest, token, answer.status, answer.body)
        call = Call({"rec": keys.idempotency(scope)}, {"token": token, "value": value, "ttl": self.ttl_s})
        return bool(self._settle.run({"rec": call}))

    def release(self, scope: str, token: str) -> None:
        """Free the key (the request failed in a way a retry may fix)."""
        self._settle.run({"rec": Call({"rec": keys.idempotency(scope)}, {"token": token})})


def _record(digest: str, token: str, status: int, body: bytes) -> bytes:
    return f"{digest}\n{token}\n{status}\n".encode() + body


def _parse(raw: bytes) -> tuple[str, str, int, bytes]:
    digest, token, status, body = raw.split(b"\n", 3)
    return digest.decode(), token.decode(), int(status), body
