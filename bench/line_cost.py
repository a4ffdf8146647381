"""What one line costs at a 0 ms upstream: Redis CPU and commands per line, worker CPU per line, and
the same machinery against a plain aiohttp loop's CPU per request, measured in the same run.

    python -m bench.line_cost                   # 5,000 lines, one worker x 64, default control
    python -m bench.line_cost --mode fixed      # BATCHQ_UPSTREAM_MODE=fixed
    python -m bench.line_cost --monitor         # also: EVALSHA per script and commands inside each (MONITOR)

Redis CPU comes from the benchmark's private Redis (``INFO cpu`` deltas from create to completed),
commands from ``INFO commandstats`` deltas (commands run inside scripts are counted too, as Redis
counts them). ``--monitor`` watches every command for the run with ``MONITOR`` to split the
``EVALSHA`` calls by script; it costs Redis CPU, so that run's CPU figures are not comparable.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2
import redis

from batchq.config import Settings
from batchq.local.stack import Stack
from batchq.runtime import build_runtime
from bench.run import CHAT, POLL_S, cpu_seconds, rows, timed_baseline


@dataclass
class Snapshot:
    cpu_s: float
    calls: Counter[str]

    @classmethod
    def take(cls, r: redis.Redis) -> Snapshot:
        cpu = r.info("cpu")
        stats = r.info("commandstats")
        calls = Counter({name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()})
        return cls(float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]), calls)


@dataclass
class LineCost:
    lines: int
    seconds: float
    redis_ms: float
    calls: Counter[str]
    process_ms: dict[str, float]
    loop_ms: float
    loop_lps: float
    scripts: Counter[str]
    inner: dict[str, Counter[str]]


def script_names(redis_url: str) -> dict[str, str]:
    """sha1 -> a name, for the scripts registered with a fixed body (``lua.Script``'s variants get
    their sha from the call's shape: they are named by their number of keys instead)."""
    rt = build_runtime(Settings(redis_url=redis_url))
    owners = {"batches": rt.batches, "scheduler": rt.scheduler, "limiter": rt.upstream.limiter}
    names = {}
    for owner_name, owner in owners.items():
        for attr, value in vars(owner).items():
            body = getattr(value, "script", None)
            if isinstance(body, str | bytes):
                raw = body.encode() if isinstance(body, str) else body
                names[hashlib.sha1(raw).hexdigest()] = f"{owner_name}.{attr.lstrip('_')}"
    return names


class Monitor:
    """Counts top-level commands (EVALSHA by script) and the commands each script runs."""

    def __init__(self, r: redis.Redis, names: dict[str, str]) -> None:
        self.r, self.names = r, names
        self.scripts: Counter[str] = Counter()
        self.inner: dict[str, Counter[str]] = {}
        self._current = "?"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.r.monitor() as m:  # type: ignore[no-untyped-call]
            for event in m.listen():
                if self._stop.is_set():
                    return
                self._count(event)

    def _count(self, event: dict[str, object]) -> None:
        command = str(event.get("command", ""))
        parts = command.split()
        if not parts:
            return
        name = parts[0].lower()
        if event.get("client_type") == "lua":
            self.inner.setdefault(self._current, Counter())[name] += 1
        elif name == "evalsha" and len(parts) > 1:
            keys_ = parts[2].strip('"') if len(parts) > 2 else "?"
            self._current = self.names.get(parts[1].strip('"').lower(), f"script with {keys_} keys")
            self.scripts[self._current] += 1
        else:
            self._current = "?"
            self.scripts[name] += 1

    @contextmanager
    def running(self) -> Iterator[Monitor]:
        self._thread.start()
        time.sleep(0.2)
        try:
            yield self
        finally:
            self._stop.set()
            self.r.ping()  # one more event wakes the listener


def run(lines: int, mode: str, concurrency: int, monitor: bool, workdir: Path) -> LineCost:
    env = {
        "BATCHQ_UPSTREAM_MAX_IN_FLIGHT": str(concurrency), "BATCHQ_MAX_LINES": str(max(50_000, lines)),
        "BATCHQ_API_RPM_PER_KEY": "0",
    }  # fmt: skip
    if mode != "default":
        env["BATCHQ_UPSTREAM_MODE"] = mode
    stack = Stack(workdir, api_key="sk-bench", env_overrides=env, mock_args=["--latency-ms", "0"])
    with stack.start(workers=1, concurrency=concurrency):
        r = redis.Redis.from_url(stack.redis_url or "")
        watcher = Monitor(redis.Redis.from_url(stack.redis_url or ""), script_names(stack.redis_url or ""))
        with watcher.running() if monitor else _nothing():
            cost = _measure(stack, r, lines)
        cost.scripts, cost.inner = watcher.scripts, watcher.inner
        cost.loop_lps, cost.loop_ms = timed_baseline(stack.upstream_url, lines, concurrency)
    return cost


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


def _measure(stack: Stack, r: redis.Redis, lines: int) -> LineCost:
    api = httpx2.Client(base_url=stack.api_url + "/v1", headers={"Authorization": "Bearer sk-bench"}, timeout=120)
    uploaded = api.post("/files", data={"purpose": "batch"}, files={"file": ("cost.jsonl", rows(lines))}).json()
    pids = {name: p.pid for name, p in stack.processes.items() if name not in ("upstream", "redis")}
    before_cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
    before = Snapshot.take(r)
    started = time.monotonic()
    batch = api.post("/batches", json={"input_file_id": uploaded["id"], "endpoint": CHAT}).json()
    while batch["status"] not in ("completed", "failed", "expired", "cancelled"):
        time.sleep(POLL_S)
        batch = api.get(f"/batches/{batch['id']}").json()
    seconds = time.monotonic() - started
    after = Snapshot.take(r)
    counts = batch["request_counts"]
    assert batch["status"] == "completed" and counts["completed"] == lines, batch
    process_ms = {name: (cpu_seconds(pid) - before_cpu[name]) * 1000 / lines for name, pid in pids.items()}
    calls = after.calls
    calls.subtract(before.calls)
    calls["info"] -= 2  # the snapshots' own
    redis_ms = (after.cpu_s - before.cpu_s) * 1000 / lines
    return LineCost(lines, seconds, redis_ms, +calls, process_ms, 0.0, 0.0, Counter(), {})


def report(cost: LineCost, mode: str) -> None:
    n = cost.lines
    print(f"\n== {n} lines, 0 ms upstream, one worker, mode {mode}: {n / cost.seconds:.0f} lines/s")
    print(f"  Redis         {cost.redis_ms:6.3f} CPU-ms per line  (one core: {1000 / cost.redis_ms:,.0f} lines/s)")
    for name, ms in sorted(cost.process_ms.items()):
        print(f"  {name:<13} {ms:6.3f} CPU-ms per line")
    total = cost.redis_ms + sum(cost.process_ms.values())
    print(f"  all           {total:6.3f} CPU-ms per line")
    print(f"  aiohttp loop  {cost.loop_ms:6.3f} CPU-ms per request ({cost.loop_lps:,.0f} requests/s)")
    print(f"  -> machinery / loop = {total / cost.loop_ms:.1f}x   (worker alone {_worker(cost) / cost.loop_ms:.1f}x)")
    print(f"  Redis commands per line: {sum(cost.calls.values()) / n:.1f} (inside scripts counted too)")
    for name, calls in cost.calls.most_common():
        if calls / n >= 0.01:
            print(f"    {name:<18} {calls / n:6.2f}")
    if cost.scripts:
        print("  top-level commands per line (MONITOR), and what each script runs inside:")
        for name, calls in cost.scripts.most_common():
            inner = cost.inner.get(name, Counter())
            inside = ", ".join(f"{c} {v / calls:.1f}" for c, v in inner.most_common(12))
            print(f"    {name:<22} {calls / n:6.2f}" + (f"   [per call: {inside}]" if inside else ""))


def _worker(cost: LineCost) -> float:
    return sum(ms for name, ms in cost.process_ms.items() if name.startswith("worker"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=5000)
    parser.add_argument("--mode", choices=["default", "gradient", "aimd", "fixed"], default="default")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--monitor", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="batchq-cost-") as tmp:
        cost = run(args.lines, args.mode, args.concurrency, args.monitor, Path(tmp))
    report(cost, args.mode)


if __name__ == "__main__":
    main()
