"""A gateway's rate limit: batchq behind the mock's fixed window (429 at once, without Retry-After).

    python -m bench.ratelimit                      # 1,500 lines behind 600 requests a minute
    python -m bench.ratelimit --limit 60 --window 6 --lines 300   # a quicker look

The gateway (as LiteLLM's proxy with a model's ``rpm``) admits ``limit`` requests per fixed
window and answers every other request at once with a 429 and no Retry-After. Prints the failed
lines (target 0), the 429s batchq drew, and its lines/s against the best any client can do: the
window's first request starts the clock, so ``lines`` take at least ``ceil(lines / limit) - 1``
windows (target >= 0.8 of that pace). The upstream behind the gateway answers in 50 ms.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import httpx2

from batchq.stack import Stack
from bench.run import rows

CHAT = "/v1/chat/completions"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1500)
    parser.add_argument("--limit", type=int, default=600, help="requests admitted per window")
    parser.add_argument("--window", type=float, default=60.0, help="the window, seconds")
    args = parser.parse_args()
    mock = ["--latency-ms", "50", "--window-limit", str(args.limit), "--window-s", str(args.window)]
    with tempfile.TemporaryDirectory(prefix="batchq-ratelimit-") as tmp:
        stack = Stack(Path(tmp), api_key="sk-bench", env_overrides={"BATCHQ_API_RPM_PER_KEY": "0"}, mock_args=mock)
        with stack.start(workers=1, concurrency=128):
            api = httpx2.Client(
                base_url=stack.api_url + "/v1", headers={"Authorization": "Bearer sk-bench"}, timeout=60
            )
            uploaded = api.post("/files", data={"purpose": "batch"}, files={"file": ("in.jsonl", rows(args.lines))})
            started = time.monotonic()
            batch = api.post("/batches", json={"input_file_id": uploaded.json()["id"], "endpoint": CHAT}).json()
            while batch["status"] not in ("completed", "failed", "expired", "cancelled"):
                time.sleep(0.5)
                batch = api.get(f"/batches/{batch['id']}").json()
            seconds = time.monotonic() - started
            stats = httpx2.get(stack.upstream_url + "/_stats").json()
    windows = math.ceil(args.lines / args.limit) - 1
    best = args.lines / (windows * args.window) if windows else float("inf")
    counts = batch["request_counts"]
    print(f"== ratelimit: {args.lines} lines behind {args.limit} requests per fixed {args.window:g} s window")
    print(f"  status        {batch['status']}: {counts['completed']} completed, {counts['failed']} failed (target 0)")
    print(f"  upstream      {stats['by_status']}")
    print(f"  batchq        {args.lines / seconds:8.2f} lines/s  ({seconds:.1f} s create -> completed)")
    print(
        f"  best possible {best:8.2f} lines/s  ({windows} windows) -> batchq = {args.lines / seconds / best:.2f} of it"
    )
    print(f"  allowed rate  {args.limit / args.window:8.2f} requests/s")


if __name__ == "__main__":
    main()
