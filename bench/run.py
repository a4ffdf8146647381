"""End-to-end benchmark: a real batchq (Redis, mock upstream, API, Celery workers) against a
plain asyncio + aiohttp script with the same concurrency cap, in the same run.

    python -m bench.run                 # every case
    python -m bench.run --case latency  # one case: latency | overhead | memory | scaling
    python -m bench.run --quick         # smaller batches, for a smoke run

Prints, per case: lines/s from create to completed, the physical limit (peak requests in flight
at the upstream / its latency) and the ratio to it, CPU-ms per line of API + workers + Redis
(from /proc; the upstream excluded), peak RSS of each process, and the aiohttp script's lines/s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx2
import orjson
import redis

from batchq.local.stack import Stack

TICKS = os.sysconf("SC_CLK_TCK")
CHAT = "/v1/chat/completions"
POLL_S = 0.1  # how often the benchmark polls the batch, as a fast client would: the end is known to within this


@dataclass
class Case:
    name: str
    lines: int
    latency_ms: int
    cap: int = 128
    workers: int = 1
    concurrency: int = 128


@dataclass
class Result:
    case: Case
    seconds: float
    peak_in_flight: int
    cpu_ms: dict[str, float]
    rss_mb: dict[str, float]
    redis_peak_mb: float
    baseline_lps: float | None = None
    baseline_cpu_ms: float | None = None  # the aiohttp script's own CPU per request (this machine, now)
    notes: list[str] = field(default_factory=list)

    @property
    def lps(self) -> float:
        return self.case.lines / self.seconds

    @property
    def limit(self) -> float | None:
        latency = self.case.latency_ms / 1000
        return self.peak_in_flight / latency if latency else None


def cpu_seconds(pid: int) -> float:
    fields_ = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields_[11]) + int(fields_[12])) / TICKS  # utime + stime


def rss_mb(pid: int, key: str = "VmHWM") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def rows(count: int) -> bytes:
    body = {"model": "bench", "messages": [{"role": "user", "content": "Summarise the benchmark in one line."}]}
    return b"".join(
        orjson.dumps({"custom_id": f"b{i}", "method": "POST", "url": CHAT, "body": body}) + b"\n" for i in range(count)
    )


def _mark(marks: dict[str, float], batch: dict[str, object], elapsed: float) -> None:
    """When the batch was first seen in_progress, with a first line done, all lines done."""
    counts = batch["request_counts"]
    assert isinstance(counts, dict)
    done = counts["completed"] + counts["failed"]
    if batch["status"] != "validating":
        marks.setdefault("in_progress", elapsed)
    if done:
        marks.setdefault("first_line", elapsed)
    if counts["total"] and done >= counts["total"]:
        marks.setdefault("last_line", elapsed)


def measured_pids(stack: Stack) -> dict[str, int]:
    return {name: p.pid for name, p in stack.processes.items() if name != "upstream"}


def run_batchq(stack: Stack, case: Case, data: bytes) -> Result:
    pids = measured_pids(stack)
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    httpx2.post(stack.upstream_url + "/_reset")
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    api = httpx2.Client(base_url=stack.api_url + "/v1", headers=headers, timeout=120)
    api_rss_before = rss_mb(pids["api"], "VmRSS")
    uploaded = api.post("/files", data={"purpose": "batch"}, files={"file": ("bench.jsonl", data)}).json()
    started = time.monotonic()
    batch = api.post("/batches", json={"input_file_id": uploaded["id"], "endpoint": CHAT}).json()
    marks: dict[str, float] = {}
    while batch["status"] not in ("completed", "failed", "expired", "cancelled"):
        time.sleep(POLL_S)
        response = api.get(f"/batches/{batch['id']}")
        response.raise_for_status()
        batch = response.json()
        _mark(marks, batch, time.monotonic() - started)
    seconds = time.monotonic() - started
    cpu = {name: (cpu_seconds(pid) - before[name]) * 1000 / case.lines for name, pid in pids.items()}
    stats = httpx2.get(stack.upstream_url + "/_stats").json()
    redis_peak = redis.Redis.from_url(stack.redis_url or "").info("memory")["used_memory_peak"] / 2**20
    result = Result(case, seconds, stats["peak_in_flight"], cpu, {n: rss_mb(p) for n, p in pids.items()}, redis_peak)
    result.notes.append(f"status {batch['status']}, counts {batch['request_counts']}")
    result.notes.append("timeline (s after create): " + ", ".join(f"{k} {v:.2f}" for k, v in marks.items()))
    result.notes.append(f"API RSS {api_rss_before:.0f} MB before upload, {rss_mb(pids['api'], 'VmRSS'):.0f} MB after")
    return result


def timed_baseline(url: str, count: int, cap: int) -> tuple[float, float]:
    """The aiohttp script's lines/s, and its own CPU-ms per request: the machine's speed right now."""
    before = os.times()
    lps = asyncio.run(aiohttp_baseline(url, count, cap))
    after = os.times()
    return lps, (after.user + after.system - before.user - before.system) * 1000 / count


async def aiohttp_baseline(url: str, count: int, cap: int) -> float:
    """What a user would write instead: one session, a semaphore, every request sent once."""
    body = orjson.dumps({"model": "bench", "messages": [{"role": "user", "content": "Summarise the benchmark."}]})
    gate = asyncio.Semaphore(cap)
    connector = aiohttp.TCPConnector(limit=cap)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> None:
            async with gate, session.post(url + CHAT, data=body, headers={"content-type": "application/json"}) as r:
                await r.read()

        started = time.monotonic()
        await asyncio.gather(*(one() for _ in range(count)))
        return count / (time.monotonic() - started)


def run_case(case: Case, workdir: Path) -> Result:
    env = {"BATCHQ_UPSTREAM_MAX_IN_FLIGHT": str(case.cap), "BATCHQ_MAX_LINES": str(max(50_000, case.lines))}
    env["BATCHQ_API_RPM_PER_KEY"] = "0"  # ten polls a second for minutes: past the default per-key limit
    mock = ["--latency-ms", str(case.latency_ms)]
    stack = Stack(workdir / case.name, api_key="sk-bench", env_overrides=env, mock_args=mock)
    with stack.start(workers=case.workers, concurrency=case.concurrency):
        result = run_batchq(stack, case, rows(case.lines))
        result.baseline_lps, result.baseline_cpu_ms = timed_baseline(stack.upstream_url, case.lines, case.cap)
    return result


def report(result: Result) -> None:
    c = result.case
    shape = f"{c.lines} lines, latency {c.latency_ms} ms, cap {c.cap}, {c.workers} worker(s) x {c.concurrency}"
    print(f"\n== {c.name}: {shape}")
    print(f"  batchq        {result.lps:8.1f} lines/s  ({result.seconds:.1f} s create -> completed)")
    if result.limit:
        print(f"  limit         {result.limit:8.1f} lines/s  (peak {result.peak_in_flight} in flight / latency)")
        print(f"  ratio         {result.lps / result.limit:8.2f} of the physical limit")
    if result.baseline_lps:
        ratio = result.lps / result.baseline_lps
        print(f"  aiohttp loop  {result.baseline_lps:8.1f} lines/s  -> batchq / aiohttp = {ratio:.2f}")
    total = sum(result.cpu_ms.values())
    parts = ", ".join(f"{n} {v:.2f}" for n, v in sorted(result.cpu_ms.items()))
    print(f"  CPU-ms/line   {total:8.2f}  ({parts})")
    if result.baseline_cpu_ms:
        ratio = total / result.baseline_cpu_ms
        print(f"  script CPU    {result.baseline_cpu_ms:8.3f} ms per request -> batchq CPU / script CPU = {ratio:.1f}x")
    print("  peak RSS MB   " + ", ".join(f"{n} {v:.0f}" for n, v in sorted(result.rss_mb.items())))
    print(f"  Redis peak    {result.redis_peak_mb:8.1f} MB")
    for note in result.notes:
        print(f"  {note}")


def cases(quick: bool) -> dict[str, list[Case]]:
    k = 5 if quick else 1
    return {
        "latency": [
            Case("latency-500ms-1-worker", 2000 // k, 500),
            Case("latency-500ms-2-workers", 2000 // k, 500, workers=2, concurrency=64),
        ],
        "overhead": [Case("overhead-0ms", 10_000 // k, 0)],
        "memory": [Case("memory-50k", 50_000 // k, 50)],
        "scaling": [
            Case("scaling-1-worker", 2000 // k, 500, cap=1024, workers=1, concurrency=64),
            Case("scaling-2-workers", 2000 // k, 500, cap=1024, workers=2, concurrency=64),
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=["all", "latency", "overhead", "memory", "scaling"], default="all")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    chosen = cases(args.quick)
    names = list(chosen) if args.case == "all" else [args.case]
    with tempfile.TemporaryDirectory(prefix="batchq-bench-") as tmp:
        results = [report_and_keep(run_case(case, Path(tmp))) for name in names for case in chosen[name]]
    scaling = [r for r in results if r.case.name.startswith("scaling")]
    if len(scaling) == 2:
        print(f"\n== scaling: 2 workers / 1 worker = {scaling[1].lps / scaling[0].lps:.2f}x")


def report_and_keep(result: Result) -> Result:
    report(result)
    return result


if __name__ == "__main__":
    main()
