"""Webhook events (OpenAI's shape) and their signature (the Standard Webhooks convention).

Headers sent: ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature: v1,<base64 HMAC-SHA256
of "{id}.{timestamp}.{body}">``. A secret of the form ``whsec_<base64>`` is decoded first, as the
Standard Webhooks libraries do; any other secret is used as its UTF-8 bytes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import orjson

from batchq.domain.status import Status

EVENT_TYPES = {
    Status.COMPLETED: "batch.completed",
    Status.FAILED: "batch.failed",
    Status.EXPIRED: "batch.expired",
    Status.CANCELLED: "batch.cancelled",
}


def event_id(batch_id: str, event_type: str) -> str:
    """Stable per batch and type, so a receiver can drop redeliveries."""
    return "evt_" + hashlib.blake2b(f"{batch_id}:{event_type}".encode(), digest_size=16).hexdigest()


def event_body(batch_id: str, event_type: str, created_at: int) -> bytes:
    event = {
        "id": event_id(batch_id, event_type),
        "object": "event",
        "type": event_type,
        "created_at": created_at,
        "data": {"id": batch_id},
    }
    return orjson.dumps(event)


def secret_bytes(secret: str) -> bytes:
    if secret.startswith("whsec_"):
        return base64.b64decode(secret.removeprefix("whsec_"))
    return secret.encode()


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secret: str | None, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    sent = {"content-type": "application/json", "webhook-id": msg_id, "webhook-timestamp": str(timestamp)}
    if secret:
        sent["webhook-signature"] = signature(secret, msg_id, timestamp, body)
    return sent
