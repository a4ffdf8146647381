"""Terminal events reach the webhook receiver, signed, and are retried until acknowledged."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import orjson
import pytest

from batchq.local.stack import Stack
from tests.integration.conftest import WEBHOOK_SECRET, Receiver
from tests.integration.helpers import chat_row, client, jsonl, submit, wait

pytestmark = pytest.mark.integration


def deliveries_for(receiver: Receiver, batch_id: str, timeout: float = 20) -> list[tuple[dict[str, str], bytes, int]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [d for d in receiver.deliveries if orjson.loads(d[1])["data"]["id"] == batch_id]
        if any(status == 200 for _, _, status in found):
            return found
        time.sleep(0.1)
    raise TimeoutError(f"no acknowledged webhook for {batch_id}")


def verify(headers: dict[str, str], body: bytes) -> bool:
    """Standard Webhooks verification, written independently of batchq's signer."""
    key = base64.b64decode(WEBHOOK_SECRET.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(hmac.compare_digest(part.removeprefix("v1,"), expected) for part in headers["webhook-signature"].split())


def test_completed_batch_sends_a_signed_event_and_retries_until_acknowledged(stack: Stack, receiver: Receiver) -> None:
    sdk = client(stack, user="hooked")
    batch = wait(sdk, submit(sdk, [chat_row("a")]).id)
    found = deliveries_for(receiver, batch.id)
    assert [status for _, _, status in found] == [500, 200]  # the first try failed and was retried
    headers, body, _ = found[-1]
    assert verify(headers, body)
    event = orjson.loads(body)
    assert event["type"] == "batch.completed" and event["object"] == "event"
    assert event["id"] == headers["webhook-id"] and event["id"].startswith("evt_")
    assert isinstance(event["created_at"], int) and event["data"] == {"id": batch.id}
    assert len({h["webhook-id"] for h, _, _ in found}) == 1  # one event id across retries


def test_failed_validation_sends_batch_failed(stack: Stack, receiver: Receiver) -> None:
    sdk = client(stack, user="hooked-failed")
    batch = wait(sdk, submit(sdk, jsonl([chat_row("fine")]) + b"{oops\n").id)
    assert batch.status == "failed"
    headers, body, _ = deliveries_for(receiver, batch.id)[-1]
    assert orjson.loads(body)["type"] == "batch.failed" and verify(headers, body)


def test_a_tampered_body_does_not_verify(stack: Stack, receiver: Receiver) -> None:
    sdk = client(stack, user="hooked-tamper")
    batch = wait(sdk, submit(sdk, [chat_row("a")]).id)
    headers, body, _ = deliveries_for(receiver, batch.id)[-1]
    assert not verify(headers, body.replace(b"completed", b"cancelled"))
