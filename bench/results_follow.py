"""Following a running batch's results: each line once, and how soon after it is stored.

    python -m bench.results_follow              # 5,000 lines, upstream latency 100 ms
    python -m bench.results_follow --lines 500  # a smoke run

One real batchq (Redis, mock upstream, API, one worker x 64 threads). A follower reads
``GET /batches/{id}/results`` from the start with ``Client.iter_result_pages(follow=True)``
(long poll), and reconnects (a new client, resuming from the last cursor) after every third
page. A watcher polls the batch's order list in Redis every 2 ms and notes when each position
was stored, so the follower's receive time minus that is each line's delay. Prints the figures
next to the target (issue #15: 5,000 lines each once; the first within a second of being stored).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import orjson
import redis

from batchq.client import Client
from batchq.local.stack import Stack
from batchq.storage import keys

CHAT = "/v1/chat/completions"


def rows(count: int) -> list[dict[str, object]]:
    body = {"model": "bench", "messages": [{"role": "user", "content": "hi"}]}
    return [{"custom_id": f"f{i}", "method": "POST", "url": CHAT, "body": body} for i in range(count)]


class Watcher(threading.Thread):
    """Notes when each position of the order list appeared (until the list is dropped at the end)."""

    def __init__(self, r: redis.Redis, batch_id: str) -> None:
        super().__init__(daemon=True)
        self.r, self.key = r, keys.batch_order(batch_id)
        self.stored_at: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            length = int(self.r.llen(self.key))
            now = time.monotonic()
            self.stored_at.extend([now] * max(0, length - len(self.stored_at)))
            time.sleep(0.002)


def follow(stack: Stack, batch_id: str) -> tuple[list[str], list[float], int]:
    """custom ids and receive times in feed order, and the requests it took."""
    ids: list[str] = []
    received: list[float] = []
    cursor, requests, done = None, 0, False
    while not done:
        with Client(stack.api_url, stack.api_key) as bq:  # a new connection every third page
            pages = bq.iter_result_pages(batch_id, cursor, follow=True)
            for _, page in zip(range(3), pages, strict=False):
                requests += 1
                now = time.monotonic()
                lines = page.lines()
                ids.extend(str(line["custom_id"]) for line in lines)
                received.extend([now] * len(lines))
                cursor, done = page.cursor, page.ended
                if done:
                    break
    return ids, received, requests


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=5000)
    parser.add_argument("--latency-ms", type=int, default=100)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-follow-"))
    stack = Stack(workdir, api_key="sk-bench", mock_args=["--latency-ms", str(args.latency_ms)])
    with stack.start(workers=1, concurrency=64):
        r = redis.Redis.from_url(stack.redis_url or "")
        with Client(stack.api_url, stack.api_key) as bq:
            batch = bq.submit(rows(args.lines), endpoint=CHAT)
        watcher = Watcher(r, batch.id)
        watcher.start()
        started = time.monotonic()
        ids, received, requests = follow(stack, batch.id)
        elapsed = time.monotonic() - started
        watcher.stop.set()
        watcher.join()
    report(args.lines, ids, received, watcher.stored_at, requests, elapsed)


def report(total: int, ids: list[str], received: list[float], stored: list[float], requests: int, s: float) -> None:
    delays = [got - at for got, at in zip(received, stored, strict=False)]
    once = len(ids) == len(set(ids)) == total and set(ids) == {f"f{i}" for i in range(total)}
    print(f"== results feed: {total} lines followed from the start, reconnecting every 3rd page")
    print(f"lines received {len(ids)}, distinct {len(set(ids))}, each exactly once: {once}  (target: yes)")
    print(f"first line: {delays[0] * 1000:.0f} ms after it was stored  (target: < 1000 ms)")
    p95 = statistics.quantiles(delays, n=20)[-1] if len(delays) > 1 else delays[0]
    print(f"every line: median {statistics.median(delays) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, "
          f"max {max(delays) * 1000:.0f} ms after it was stored ({len(delays)} timed)")  # fmt: skip
    print(f"{requests} requests in {s:.1f} s; {orjson.dumps({'lines': len(ids), 'requests': requests}).decode()}")


if __name__ == "__main__":
    main()
