"""The default concurrency control against three upstreams, each beside its own baseline in the same run.

    python -m bench.engine                   # every case
    python -m bench.engine --case engine     # one: engine | fixed | queue
    python -m bench.engine --mode gradient   # the same with another BATCHQ_UPSTREAM_MODE
    python -m bench.engine --versus fixed    # each case also with that mode, and the ratio of the two

- ``engine``: a continuous-batching engine (the mock's engine model: 50 decode steps of
  4 ms x (1 + n / 32) with n in service, at most 256), nobody else using it. batchq (1 worker x
  128, cap 128) against a plain aiohttp loop at the same cap: target >= 0.9x.
- ``fixed``: a fixed 500 ms latency, cap 128: batchq against the physical limit (peak in flight /
  latency, target >= 0.9) and the aiohttp loop (target >= 0.95x).
- ``queue``: a vLLM-like queue (32 served at once, 200 ms each, the rest queued), the batch alone,
  cap 256: batchq's lines/s as a share of the capacity, 160/s (target >= 0.9).
Prints the route's window over the run (min / median / max) and, for the engine, the largest
batch the engine ran.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import redis

from batchq.local.stack import Stack
from batchq.storage import keys
from bench.run import Case, Result, rows, run_batchq, timed_baseline


@dataclass
class Setup:
    case: Case
    mock: list[str]
    capacity: float | None = None  # the upstream's own ceiling in requests/s, when it has one
    baseline: bool = True


@dataclass
class Outcome:
    setup: Setup
    result: Result
    windows: list[float] = field(default_factory=list)
    engine_peak: int | None = None


def setups(lines: int) -> dict[str, Setup]:
    engine = ["--engine-k", "32", "--engine-steps", "50", "--engine-step-ms", "4", "--engine-max", "256"]
    return {
        "engine": Setup(Case("engine", lines, 0, cap=128), engine),
        "fixed": Setup(Case("fixed-500ms", lines, 500, cap=128), ["--latency-ms", "500"]),
        "queue": Setup(
            Case("queue-32x200ms", lines, 200, cap=256), ["--latency-ms", "200", "--serve-slots", "32"], 160.0, False
        ),
    }  # fmt: skip


def run(setup: Setup, workdir: Path, mode: str | None) -> Outcome:
    case = setup.case
    env = {"BATCHQ_UPSTREAM_MAX_IN_FLIGHT": str(case.cap), "BATCHQ_API_RPM_PER_KEY": "0"}
    if mode:
        env["BATCHQ_UPSTREAM_MODE"] = mode
    stack = Stack(workdir / case.name, api_key="sk-bench", env_overrides=env, mock_args=setup.mock)
    with stack.start(workers=case.workers, concurrency=case.concurrency):
        windows: list[float] = []
        stop = threading.Event()
        watcher = threading.Thread(target=_watch, args=(stack, windows, stop), daemon=True)
        watcher.start()
        result = run_batchq(stack, case, rows(case.lines))
        stop.set()
        watcher.join()
        peak = httpx2.get(stack.upstream_url + "/_stats").json().get("engine_peak_batch")
        if setup.baseline:
            result.baseline_lps, result.baseline_cpu_ms = timed_baseline(stack.upstream_url, case.lines, case.cap)
    return Outcome(setup, result, windows, peak)


def _watch(stack: Stack, windows: list[float], stop: threading.Event) -> None:
    r = redis.Redis.from_url(stack.redis_url or "")
    while not stop.wait(0.25):
        w = r.hget(keys.limit_window("default"), "w")
        if w is not None:
            windows.append(float(w))


def report(outcome: Outcome) -> None:
    result, setup = outcome.result, outcome.setup
    case = setup.case
    print(f"\n== {case.name}: {case.lines} lines, cap {case.cap}, {case.workers} worker x {case.concurrency}")
    print(f"  batchq        {result.lps:8.1f} lines/s  ({result.seconds:.1f} s create -> completed)")
    if result.limit:
        print(f"  physical      {result.limit:8.1f} lines/s  (peak {result.peak_in_flight} in flight / latency)")
        print(f"  ratio         {result.lps / result.limit:8.2f} of the physical limit")
    if setup.capacity:
        print(f"  capacity      {setup.capacity:8.1f} lines/s  -> batchq = {result.lps / setup.capacity:.2f} of it")
    if result.baseline_lps:
        ratio = result.lps / result.baseline_lps
        print(f"  aiohttp loop  {result.baseline_lps:8.1f} lines/s  -> batchq / loop = {ratio:.2f}")
    if outcome.windows:
        w = outcome.windows
        print(f"  window        min {min(w):.0f} / median {statistics.median(w):.0f} / max {max(w):.0f}")
    if outcome.engine_peak is not None:
        print(f"  engine batch  peak {outcome.engine_peak}")
    for note in result.notes[:2]:
        print(f"  {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=["all", "engine", "fixed", "queue"], default="all")
    parser.add_argument("--lines", type=int, default=3000)
    parser.add_argument("--mode", help="BATCHQ_UPSTREAM_MODE (default: batchq's default)")
    parser.add_argument("--versus", help="also run each case with this BATCHQ_UPSTREAM_MODE, and compare")
    args = parser.parse_args()
    chosen = setups(args.lines)
    names = list(chosen) if args.case == "all" else [args.case]
    with tempfile.TemporaryDirectory(prefix="batchq-engine-") as tmp:
        for name in names:
            first = run(chosen[name], Path(tmp) / "a", args.mode)
            report(first)
            if args.versus:
                other = run(dataclasses.replace(chosen[name], baseline=False), Path(tmp) / "b", args.versus)
                report(other)
                ratio = first.result.lps / other.result.lps
                print(f"  {args.mode or 'default'} / {args.versus} = {ratio:.2f} (same machine, minutes apart)")
            time.sleep(1)


if __name__ == "__main__":
    main()
