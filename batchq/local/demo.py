"""``batchq demo``: a real batch, end to end, through the official ``openai`` SDK."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
from openai import OpenAI
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from batchq.config import get_settings
from batchq.local.embedded import ensure_redis, ui_secret
from batchq.local.stack import Stack

console = Console()
TERMINAL = {"completed", "failed", "expired", "cancelled"}


def demo_requests(count: int) -> bytes:
    """Chat requests; every 50th asks the mock for a 400, so the error file has something in it."""
    rows = []
    for i in range(count):
        body: dict[str, object] = {"model": "demo-model", "messages": [{"role": "user", "content": f"Say hi #{i}"}]}
        if i % 50 == 49:
            body["mock"] = {"status": 400}
        rows.append({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body})
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


def run_demo(lines: int, workdir: Path) -> int:
    workdir = workdir.resolve()
    url = get_settings().redis_url
    embedded = ensure_redis(url, workdir / "redis")
    if embedded:
        console.print(f"No Redis answered at {url}: started an embedded redis-server.")
    dashboard = {"BATCHQ_UI_SECRET": get_settings().ui_secret or ui_secret(workdir / "data")}  # the dashboard is on
    mock = ["--latency-ms", "50", "--fail-500", "0.05"]
    stack = Stack(workdir, api_key="sk-demo", redis_url=url, mock_args=mock, env_overrides=dashboard)
    try:
        with stack.start(workers=1, concurrency=32):
            sign_in = f"{stack.api_url}/ui (sign in with the key {stack.api_key})"
            console.print(f"Dashboard, while the demo runs: {sign_in}", soft_wrap=True)
            return _submit_and_wait(stack, lines, workdir)
    finally:
        if embedded:
            embedded.terminate()


def _submit_and_wait(stack: Stack, lines: int, workdir: Path) -> int:
    client = OpenAI(base_url=stack.api_url + "/v1", api_key=stack.api_key)
    source = workdir / "requests.jsonl"
    source.write_bytes(demo_requests(lines))
    uploaded = client.files.create(file=source.open("rb"), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    console.print(f"Created {batch.id} from {source} ({lines} requests).")
    batch = _watch(client, batch.id)
    return _download(client, batch, workdir)


def _watch(client: OpenAI, batch_id: str):  # type: ignore[no-untyped-def]
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("validating", total=None)
        while True:
            batch = client.batches.retrieve(batch_id)
            counts = batch.request_counts
            done = (counts.completed + counts.failed) if counts else 0
            bar.update(task, description=batch.status, completed=done, total=(counts.total if counts else None) or None)
            if batch.status in TERMINAL:
                return batch
            time.sleep(0.5)


def _download(client: OpenAI, batch, workdir: Path) -> int:  # type: ignore[no-untyped-def]
    counts = batch.request_counts
    console.print(f"Batch {batch.id}: {batch.status}; {counts.completed} completed, {counts.failed} failed.")
    for label, file_id in (("output", batch.output_file_id), ("errors", batch.error_file_id)):
        if file_id:
            target = workdir / f"{label}.jsonl"
            target.write_bytes(client.files.content(file_id).content)
            console.print(f"  {label:7} {target}")
    return 0 if batch.status == "completed" else 1
