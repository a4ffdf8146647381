"""Redis restart benchmark: Redis (append-only file) SIGKILLed mid-batch and started again.

    python -m bench.redis_restart                    # default settings (watchdog every 15 s, lease 120 s)
    python -m bench.redis_restart --kill-worker      # the worker SIGKILLed with Redis, started again with it
    python -m bench.redis_restart --down 5 --rounds 3

One real batchq (a redis-server with ``appendonly yes``, ``appendfsync everysec``; the mock
upstream at 400 ms; the API; one worker x 32 threads), default settings. Once 100 of 600 lines are
done, Redis is SIGKILLed (the last second of its writes may be lost), and started again ``--down``
seconds later on the same port and directory. While it is down, the API is asked for the batch
every 0.1 s. Prints, per round: what the API answered while Redis was down and its slowest answer,
seconds from Redis's restart to ``completed``, and whether every line is in the files exactly once.
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx2
import orjson

from batchq.local.stack import Stack
from bench.results import exactly_once

CHAT = "/v1/chat/completions"
LINES, KILL_AT, LATENCY_MS = 600, 100, 400


def rows() -> bytes:
    body = {"model": "bench", "messages": [{"role": "user", "content": "hi"}]}
    lines = (orjson.dumps({"custom_id": f"l{i}", "method": "POST", "url": CHAT, "body": body}) for i in range(LINES))
    return b"".join(line + b"\n" for line in lines)


def done(batch: dict[str, object]) -> int:
    counts = batch["request_counts"]
    assert isinstance(counts, dict)
    return int(counts["completed"]) + int(counts["failed"])


def probe_while_down(api: httpx2.Client, batch_id: str, seconds: float) -> tuple[Counter[int], float]:
    """The API's answers (status -> how many) while Redis is down, and the slowest one's seconds."""
    answers: Counter[int] = Counter()
    slowest, until = 0.0, time.monotonic() + seconds
    while time.monotonic() < until:
        started = time.monotonic()
        answers[api.get(f"/batches/{batch_id}").status_code] += 1
        slowest = max(slowest, time.monotonic() - started)
        time.sleep(0.1)
    return answers, slowest


def one_round(workdir: Path, down_s: float, kill_worker: bool) -> str:
    stack = Stack(workdir, api_key="sk-bench", env_overrides={"BATCHQ_API_RPM_PER_KEY": "0"}, persist=True)
    stack.mock_args = ["--latency-ms", str(LATENCY_MS)]
    with stack.start(workers=1, concurrency=32):
        api = httpx2.Client(base_url=stack.api_url + "/v1", headers={"Authorization": "Bearer sk-bench"}, timeout=60)
        uploaded = api.post("/files", data={"purpose": "batch"}, files={"file": ("in.jsonl", rows())}).json()
        batch_id = api.post("/batches", json={"input_file_id": uploaded["id"], "endpoint": CHAT}).json()["id"]
        while done(api.get(f"/batches/{batch_id}").json()) < KILL_AT:
            time.sleep(0.05)
        stack.kill("redis")
        if kill_worker:
            stack.kill("worker0")
        answers, slowest = probe_while_down(api, batch_id, down_s)
        stack.start_redis()
        restarted = time.monotonic()
        if kill_worker:
            stack.start_worker("worker0", concurrency=32)
        final = api.get(f"/batches/{batch_id}").json()
        while final["status"] not in ("completed", "failed", "expired", "cancelled"):
            time.sleep(0.2)
            final = api.get(f"/batches/{batch_id}").json()
        took = time.monotonic() - restarted
        once = "yes" if exactly_once(api, final, LINES) else "NO"
        shown = ", ".join(f"{n}x {status}" for status, n in sorted(answers.items()))
        down = f"  API while down: {shown} (slowest {slowest:.2f} s)"
        return f"{down}; completed {took:.1f} s after the restart; exactly once: {once}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--down", type=float, default=3.0, help="seconds Redis stays down")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--kill-worker", action="store_true", help="SIGKILL the worker with Redis")
    args = parser.parse_args()
    who = "Redis and the worker" if args.kill_worker else "Redis"
    print(f"== {who} SIGKILLed after {KILL_AT} of {LINES} lines ({LATENCY_MS} ms each), down {args.down:.0f} s")
    with tempfile.TemporaryDirectory() as workdir:
        for n in range(args.rounds):
            print(one_round(Path(workdir) / f"round{n}", args.down, args.kill_worker), flush=True)


if __name__ == "__main__":
    main()
