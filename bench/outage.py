"""Upstream outage benchmark: a batch rides out an upstream that goes away mid-batch and comes back.

    python -m bench.outage                  # a 60 s outage in a 2,000-line batch, without and with the breaker
    python -m bench.outage --outage 600     # a 10-minute outage (not run in CI)

One real batchq (Redis, mock upstream at 100 ms latency, API, one worker x 128 threads). Once 500
lines are done, the mock is stopped and, for the outage, a listener on its port accepts every
connection and closes it at once, counting them: the connection attempts a dead upstream sees.
Then the mock starts again on the same port. The same run is made twice, side by side: with the
breaker off (``BATCHQ_UPSTREAM_BREAKER_FAILURES=0``: every line retries on its own, as before the
breaker) and with the default breaker. Prints, for each: lines failed, whether every line is in
the output exactly once, seconds from the upstream's return to ``completed``, and connection
attempts per second during the outage. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx2
import orjson

from batchq.local.stack import Stack
from bench.results import exactly_once

CHAT = "/v1/chat/completions"
LINES = 2000
LATENCY_MS = 100


class DeadPort:
    """A listener that accepts each connection and closes it at once, counting them."""

    def __init__(self, port: int) -> None:
        self.attempts = 0
        self._server = socket.create_server(("127.0.0.1", port), reuse_port=False, backlog=1024)
        self._server.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            self.attempts += 1
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            conn.close()  # a reset: no answer at all

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._server.close()


@dataclass
class Run:
    label: str
    failed: int
    exactly_once: bool
    back_to_completed_s: float
    attempts_per_s: float
    status: str


def rows() -> bytes:
    body = {"model": "bench", "messages": [{"role": "user", "content": "hi"}]}
    return b"".join(
        orjson.dumps({"custom_id": f"l{i}", "method": "POST", "url": CHAT, "body": body}) + b"\n" for i in range(LINES)
    )


def poll(api: httpx2.Client, batch_id: str) -> dict[str, object]:
    response = api.get(f"/batches/{batch_id}")
    response.raise_for_status()
    return dict(response.json())


def done(batch: dict[str, object]) -> int:
    counts = batch["request_counts"]
    assert isinstance(counts, dict)
    return int(counts["completed"]) + int(counts["failed"])


def run(workdir: Path, label: str, breaker_failures: str | None, outage_s: float) -> Run:
    env = {"BATCHQ_API_RPM_PER_KEY": "0"}
    if breaker_failures is not None:
        env["BATCHQ_UPSTREAM_BREAKER_FAILURES"] = breaker_failures
    stack = Stack(workdir / label, api_key="sk-bench", env_overrides=env, mock_args=["--latency-ms", str(LATENCY_MS)])
    with stack.start(workers=1, concurrency=128):
        api = httpx2.Client(base_url=stack.api_url + "/v1", headers={"Authorization": "Bearer sk-bench"}, timeout=60)
        uploaded = api.post("/files", data={"purpose": "batch"}, files={"file": ("in.jsonl", rows())}).json()
        batch = api.post("/batches", json={"input_file_id": uploaded["id"], "endpoint": CHAT}).json()
        while done(poll(api, batch["id"])) < 500:
            time.sleep(0.05)
        stack.kill("upstream")
        dead = DeadPort(stack.upstream_port)
        time.sleep(outage_s)
        dead.close()
        stack.start_upstream()
        back = time.monotonic()
        final = poll(api, batch["id"])
        while final["status"] not in ("completed", "failed", "expired", "cancelled"):
            time.sleep(0.1)
            final = poll(api, batch["id"])
        after = time.monotonic() - back
        return Run(
            label,
            _failed(final),
            exactly_once(api, final, LINES),
            after,
            dead.attempts / outage_s,
            str(final["status"]),
        )


def _failed(batch: dict[str, object]) -> int:
    counts = batch["request_counts"]
    assert isinstance(counts, dict)
    return int(counts["failed"])


def report(runs: list[Run], outage_s: float) -> None:
    print(f"== outage: {LINES} lines, latency {LATENCY_MS} ms, upstream gone for {outage_s:.0f} s after 500 lines")
    print(f"  {'':<22} {'lines failed':>12} {'exactly once':>13} {'back -> completed':>18} {'attempts/s':>11}")
    for r in runs:
        once = "yes" if r.exactly_once else "NO"
        print(
            f"  {r.label:<22} {r.failed:>12} {once:>13} {r.back_to_completed_s:>16.1f} s {r.attempts_per_s:>11.1f}"
            f"   ({r.status})"
        )
    print("  targets (with the breaker): 0 failed, every line once, <= 15 s, <= 5 attempts/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outage", type=float, default=60.0, help="seconds the upstream is gone")
    parser.add_argument("--no-baseline", action="store_true", help="skip the breaker-off run (long outages)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="batchq-outage-") as tmp:
        runs = [] if args.no_baseline else [run(Path(tmp), "breaker off (before)", "0", args.outage)]
        runs.append(run(Path(tmp), "breaker on (default)", None, args.outage))
    report(runs, args.outage)


if __name__ == "__main__":
    main()
