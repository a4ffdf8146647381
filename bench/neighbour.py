"""Neighbour benchmark: how much batch traffic slows the interactive users of the same upstream.

    python -m bench.neighbour

The mock upstream models vLLM: at most 32 requests served at once, 200 ms each, the rest queued
(never a 429), so latency is the only sign that it is full. An interactive probe sends one request
every 100 ms straight to it. First alone (its idle p95), then while a 6,000-line batch runs
through batchq (one worker x 128 threads, cap 256): the probe's p95 and the batch's share of the
server's capacity (32 / 200 ms = 160 requests/s). Run side by side: with the default mode
(``throughput``: seeks the server's throughput, holds at its knee), with ``"priority":
"background"`` (the ``gradient`` control: backs off while latency is above a tolerance of the
unloaded latency, so batch traffic takes only the spare capacity) and, with ``--all``, the
modes ``gradient`` and ``aimd`` (backs off on 429s only). Also prints the route's window over
the run (min, median, max once settled), which shows whether the controller oscillates.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import orjson
import redis

from batchq.local.embedded import free_port
from batchq.local.stack import Stack
from batchq.storage import keys

CHAT = "/v1/chat/completions"
SLOTS, LATENCY_MS = 32, 200
CAPACITY = SLOTS / (LATENCY_MS / 1000)
LINES = 6000
PROBE_EVERY_S = 0.1


@dataclass
class Probe:
    """One interactive request every PROBE_EVERY_S straight to the upstream, timed."""

    url: str
    latencies: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run_for(self, seconds: float) -> list[float]:
        self.latencies = []
        self._stop.clear()
        thread = threading.Thread(target=self._loop, daemon=True)
        thread.start()
        time.sleep(seconds)
        self._stop.set()
        thread.join(30)
        return self.latencies

    def start(self) -> threading.Thread:
        self.latencies = []
        self._stop.clear()
        thread = threading.Thread(target=self._loop, daemon=True)
        thread.start()
        return thread

    def stop(self, thread: threading.Thread) -> list[float]:
        self._stop.set()
        thread.join(30)
        return self.latencies

    def _loop(self) -> None:
        body = {"model": "interactive", "messages": [{"role": "user", "content": "hi"}]}
        with httpx2.Client(timeout=60) as http:
            while not self._stop.is_set():
                began = time.perf_counter()
                http.post(self.url + CHAT, json=body).raise_for_status()
                self.latencies.append(time.perf_counter() - began)
                self._stop.wait(max(0.0, PROBE_EVERY_S - (time.perf_counter() - began)))


@dataclass
class Run:
    mode: str
    idle_p95: float
    busy_p95: float
    share: float
    windows: list[float]


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) >= 20 else max(values, default=0.0)


def rows() -> bytes:
    body = {"model": "batch", "messages": [{"role": "user", "content": "hi"}]}
    return b"".join(
        orjson.dumps({"custom_id": f"l{i}", "method": "POST", "url": CHAT, "body": body}) + b"\n" for i in range(LINES)
    )


def run(workdir: Path, mode: str, tolerance: float | None = None) -> Run:
    """``mode``: throughput | aimd | gradient | background (a route with ``"priority": "background"``)."""
    env = {"BATCHQ_API_RPM_PER_KEY": "0"}
    if mode != "background":
        env["BATCHQ_UPSTREAM_MODE"] = mode
    if tolerance is not None:
        env["BATCHQ_UPSTREAM_TOLERANCE"] = str(tolerance)
    port = free_port()
    if mode == "background":
        route = {"name": "default", "url": f"http://127.0.0.1:{port}", "priority": "background"}
        env["BATCHQ_UPSTREAMS"] = orjson.dumps([route]).decode()
    mock = ["--latency-ms", str(LATENCY_MS), "--serve-slots", str(SLOTS)]
    stack = Stack(workdir / mode, api_key="sk-bench", env_overrides=env, mock_args=mock, upstream_port=port)
    with stack.start(workers=1, concurrency=128):
        probe = Probe(stack.upstream_url)
        idle = probe.run_for(8)
        r = redis.Redis.from_url(stack.redis_url or "")
        api = httpx2.Client(base_url=stack.api_url + "/v1", headers={"Authorization": "Bearer sk-bench"}, timeout=60)
        uploaded = api.post("/files", data={"purpose": "batch"}, files={"file": ("in.jsonl", rows())}).json()
        batch_id = api.post("/batches", json={"input_file_id": uploaded["id"], "endpoint": CHAT}).json()["id"]
        windows, busy, share = measure(r, batch_id, probe)
        api.post(f"/batches/{batch_id}/cancel")
    return Run(mode, p95(idle), p95(busy), share, windows)


def measure(r: redis.Redis, batch_id: str, probe: Probe) -> tuple[list[float], list[float], float]:
    """Once 500 lines are done, until 80 % are: the route's window, the probe's latencies, lines/s."""
    while _done(r, batch_id) < 500:
        time.sleep(0.1)
    thread = probe.start()
    first, began = _done(r, batch_id), time.monotonic()
    windows: list[float] = []
    while (done := _done(r, batch_id)) < 0.8 * LINES:
        windows.append(float(r.hget(keys.limit_window("default"), "w") or 0))
        time.sleep(0.5)
    elapsed = time.monotonic() - began
    return windows, probe.stop(thread), (done - first) / elapsed / CAPACITY


def _done(r: redis.Redis, batch_id: str) -> int:
    completed, failed = r.hmget(keys.batch(batch_id), ["completed", "failed"])
    return int(completed or 0) + int(failed or 0)


def report(runs: list[Run]) -> None:
    print(f"== neighbour: vLLM-like upstream ({SLOTS} served at once, {LATENCY_MS} ms, the rest queued, no 429)")
    print(f"   probe: one request every {PROBE_EVERY_S * 1000:.0f} ms; batch: {LINES} lines, 1 worker x 128, cap 256")
    print(f"  {'mode':<10} {'idle p95':>9} {'busy p95':>9} {'x idle':>7} {'batch share':>12}   window min/median/max")
    for run in runs:
        w = run.windows[len(run.windows) // 4 :] or [0.0]  # once settled
        print(
            f"  {run.mode:<10} {run.idle_p95 * 1000:>7.0f}ms {run.busy_p95 * 1000:>7.0f}ms "
            f"{run.busy_p95 / run.idle_p95:>6.2f}x {run.share:>12.2f}   "
            f"{min(w):.0f} / {statistics.median(w):.0f} / {max(w):.0f}"
        )
    print("  targets: background: busy p95 <= 1.3x idle, batch share >= 0.7; throughput (default): p95 <= 2x idle")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tolerance", type=float, help="BATCHQ_UPSTREAM_TOLERANCE for the gradient run")
    parser.add_argument("--all", action="store_true", help="also the gradient and aimd modes")
    parser.add_argument("--only", choices=["throughput", "background", "gradient", "aimd"], help="one mode")
    args = parser.parse_args()
    modes = ["throughput", "background"] + (["gradient", "aimd"] if args.all else [])
    with tempfile.TemporaryDirectory(prefix="batchq-neighbour-") as tmp:
        runs = [
            run(Path(tmp), m, args.tolerance if m == "gradient" else None)
            for m in ([args.only] if args.only else modes)
        ]
    report(runs)


if __name__ == "__main__":
    main()
