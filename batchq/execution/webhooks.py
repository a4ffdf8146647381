"""Deliver a batch's terminal event to ``BATCHQ_WEBHOOK_URL``; the Celery task retries on failure."""

from __future__ import annotations

import logging
import time

import httpx2

from batchq.config import Settings
from batchq.domain import webhooks

log = logging.getLogger("batchq.webhooks")


class DeliveryFailed(Exception):
    """The receiver did not answer 2xx; the task retries with backoff."""


def deliver(settings: Settings, batch_id: str, event_type: str, created_at: int) -> None:
    if not settings.webhook_url:
        return
    body = webhooks.event_body(batch_id, event_type, created_at)
    msg_id = webhooks.event_id(batch_id, event_type)
    sent = webhooks.headers(settings.webhook_secret, msg_id, int(time.time()), body)
    try:
        response = httpx2.post(settings.webhook_url, content=body, headers=sent, timeout=settings.webhook_timeout_s)
    except httpx2.HTTPError as exc:
        raise DeliveryFailed(f"{type(exc).__name__}: {exc}") from exc
    if not 200 <= response.status_code < 300:
        raise DeliveryFailed(f"receiver answered {response.status_code}")
    log.info("webhook delivered", extra={"batch_id": batch_id, "event": event_type})
