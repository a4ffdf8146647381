"""Helpers shared by the integration tests: SDK clients, JSONL rows, waiting for a batch."""

from __future__ import annotations

import time
from typing import Any

import orjson
from openai import OpenAI
from openai.types import Batch

from batchq.local.stack import Stack

TERMINAL = {"completed", "failed", "expired", "cancelled"}
CHAT = "/v1/chat/completions"


def client(stack: Stack, user: str | None = None, key: str | None = None) -> OpenAI:
    headers = {"X-On-Behalf-Of": user} if user else None
    return OpenAI(base_url=stack.api_url + "/v1", api_key=key or stack.api_key, default_headers=headers, max_retries=0)


def chat_row(custom_id: str, content: str = "hello", **mock: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": content}]}
    if mock:
        body["mock"] = mock
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body}


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


def submit(sdk: OpenAI, rows: list[dict[str, Any]] | bytes, window: str = "24h", **kw: Any) -> Batch:
    data = rows if isinstance(rows, bytes) else jsonl(rows)
    uploaded = sdk.files.create(file=("input.jsonl", data), purpose="batch")
    return sdk.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window=window, **kw)  # type: ignore[arg-type]


def wait(sdk: OpenAI, batch_id: str, timeout: float = 60, until: set[str] = TERMINAL) -> Batch:
    deadline = time.monotonic() + timeout
    while True:
        batch = sdk.batches.retrieve(batch_id)
        if batch.status in until:
            return batch
        if time.monotonic() > deadline:
            raise TimeoutError(f"{batch_id} still {batch.status} after {timeout}s: {batch.request_counts}")
        time.sleep(0.1)


def lines_of(sdk: OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [orjson.loads(line) for line in sdk.files.content(file_id).content.splitlines() if line.strip()]


def results(sdk: OpenAI, batch: Batch) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return lines_of(sdk, batch.output_file_id), lines_of(sdk, batch.error_file_id)


def assert_exactly_once(sdk: OpenAI, batch: Batch, custom_ids: list[str]) -> None:
    output, errors = results(sdk, batch)
    seen = [line["custom_id"] for line in output + errors]
    assert sorted(seen) == sorted(custom_ids), "every input line exactly once across output and error files"
    counts = batch.request_counts
    assert counts is not None
    assert (counts.completed, counts.failed, counts.total) == (len(output), len(errors), len(custom_ids))
