"""Crash benchmark: the issue #20 runs at full size, each beside an uninterrupted baseline.

    python -m bench.crash                 # both scenarios
    python -m bench.crash --only serve    # or: --only worker

- **serve**: ``batchq serve`` (32 threads) with a 1,500-line batch at 100 ms; the whole process
  tree SIGKILLed at 410 lines done, the same command started again. Prints when the API answered
  and when the batch completed (seconds after the restart), then how long a SIGTERM took to end
  every process, and whether any was left.
- **worker**: one worker (8 threads) on a route capped at 8 in flight (the window is no larger
  than the dead worker's slots), a 600-line batch at 150 ms; the worker SIGKILLed at 40 lines done
  and a new one started at once. Prints seconds from the kill to ``completed``.

Each also runs the same batch without a crash first, and prints the crash run's time as a ratio
to it. Default settings otherwise (``BATCHQ_LINE_LEASE_S`` 10 s, watchdog every 5 s, upstream
timeout 600 s). Every line is checked to be in the files exactly once. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx2
import orjson

from batchq.local.embedded import free_port, wait_for
from batchq.local.stack import Stack
from bench.results import exactly_once

CHAT = "/v1/chat/completions"
KEY = "sk-bench"
TERMINAL = ("completed", "failed", "expired", "cancelled")


def rows(lines: int) -> bytes:
    body = {"model": "bench", "messages": [{"role": "user", "content": "hi"}]}
    made = (orjson.dumps({"custom_id": f"l{i}", "method": "POST", "url": CHAT, "body": body}) for i in range(lines))
    return b"".join(line + b"\n" for line in made)


def api_client(url: str) -> httpx2.Client:
    return httpx2.Client(base_url=url + "/v1", headers={"Authorization": f"Bearer {KEY}"}, timeout=60)


def create(api: httpx2.Client, lines: int) -> str:
    uploaded = api.post("/files", data={"purpose": "batch"}, files={"file": ("in.jsonl", rows(lines))}).json()
    return str(api.post("/batches", json={"input_file_id": uploaded["id"], "endpoint": CHAT}).json()["id"])


def done(api: httpx2.Client, batch_id: str) -> int:
    try:
        counts = api.get(f"/batches/{batch_id}").json()["request_counts"]
    except (httpx2.HTTPError, KeyError, ValueError):
        return -1
    return int(counts["completed"]) + int(counts["failed"])


def until_done(api: httpx2.Client, batch_id: str, lines: int) -> None:
    while done(api, batch_id) < lines:
        time.sleep(0.05)


def finish(api: httpx2.Client, batch_id: str, lines: int) -> str:
    """Waits for the end; says whether every line is in the files once."""
    final = api.get(f"/batches/{batch_id}").json()
    while final["status"] not in TERMINAL:
        time.sleep(0.1)
        final = api.get(f"/batches/{batch_id}").json()
    return "yes" if final["status"] == "completed" and exactly_once(api, final, lines) else "NO"


class Serve:
    """One ``batchq serve`` command, started again with the same settings."""

    def __init__(self, workdir: Path, upstream_url: str) -> None:
        self.workdir, self.port = workdir, free_port()
        self.env = os.environ | {
            "BATCHQ_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "BATCHQ_DATA_DIR": str(workdir / "data"),
            "BATCHQ_API_KEYS": KEY, "BATCHQ_UPSTREAM_URL": upstream_url, "BATCHQ_API_RPM_PER_KEY": "0",
            "BATCHQ_LOG_LEVEL": "WARNING",
        }  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [sys.executable, "-m", "batchq", "serve", "--port", str(self.port), "--concurrency", "32"]
        with open(self.workdir / "serve.log", "ab") as log:
            self.process = subprocess.Popen(args, env=self.env, stdout=log, stderr=log, start_new_session=True)
        wait_for(self._ready, 120, "batchq serve")

    def _ready(self) -> bool:
        try:
            return httpx2.get(f"http://127.0.0.1:{self.port}/health", timeout=1).status_code == 200
        except httpx2.HTTPError:
            return False

    def children(self) -> list[int]:
        assert self.process is not None
        found = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True).stdout
        return [int(pid) for pid in found.split()]

    def kill_group(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def terminate(self) -> tuple[float, int]:
        """SIGTERM; seconds until the supervisor exits, and how many of its children are left."""
        assert self.process is not None
        children = self.children()
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(120)
        took = time.monotonic() - started
        time.sleep(0.5)
        return took, sum(1 for pid in children if Path(f"/proc/{pid}").exists())


def serve_run(workdir: Path, upstream_url: str, lines: int, crash_at: int | None) -> str:
    serve = Serve(workdir, upstream_url)
    serve.start()
    api = api_client(f"http://127.0.0.1:{serve.port}")
    started = time.monotonic()
    batch_id = create(api, lines)
    if crash_at is None:
        once = finish(api, batch_id, lines)
        took = time.monotonic() - started
        serve.terminate()
        return f"{took:.1f} s|{once}"
    until_done(api, batch_id, crash_at)
    serve.kill_group()
    restarted = time.monotonic()
    serve.start()
    ready = time.monotonic() - restarted
    once = finish(api, batch_id, lines)
    took = time.monotonic() - restarted
    stop_s, left = serve.terminate()
    return f"{took:.1f} s|{once}|{ready:.1f}|{stop_s:.1f}|{left}"


def worker_run(workdir: Path, lines: int, crash_at: int | None) -> str:
    env = {"BATCHQ_API_RPM_PER_KEY": "0", "BATCHQ_UPSTREAM_MAX_IN_FLIGHT": "8"}
    stack = Stack(workdir, api_key=KEY, env_overrides=env, mock_args=["--latency-ms", "150"])
    with stack.start(workers=1, concurrency=8):
        api = api_client(stack.api_url)
        started = time.monotonic()
        batch_id = create(api, lines)
        if crash_at is not None:
            until_done(api, batch_id, crash_at)
            stack.kill("worker0")
            started = time.monotonic()
            stack.start_worker("worker1", concurrency=8)
        once = finish(api, batch_id, lines)
        return f"{time.monotonic() - started:.1f} s|{once}"


def with_upstream(workdir: Path, run: Callable[[str], str]) -> str:
    mock = Stack(workdir / "upstream", mock_args=["--latency-ms", "100"])
    mock.workdir.mkdir(parents=True)
    mock.start_upstream()
    try:
        return run(mock.upstream_url)
    finally:
        mock.stop()


def ratio(crash: str, base: str) -> str:
    return f"{float(crash.split()[0]) / float(base.split()[0]):.2f}x"


def serve_scenario(workdir: Path) -> None:
    print("== batchq serve SIGKILLed whole at 410 of 1,500 lines (100 ms, 32 threads), started again", flush=True)
    base = with_upstream(workdir / "base", lambda url: serve_run(workdir / "base", url, 1500, None))
    crash = with_upstream(workdir / "crash", lambda url: serve_run(workdir / "crash", url, 1500, 410))
    took, once, ready, stop_s, left = crash.split("|")
    print(f"  baseline (no crash): completed {base.split('|')[0]} after the create")
    print(f"  after the restart: API answered {ready} s, batch completed {took} ({ratio(took, base)} the baseline)")
    print(f"  every line exactly once: {once}; then SIGTERM: everything ended in {stop_s} s, {left} processes left")


def worker_scenario(workdir: Path) -> None:
    print("== a worker SIGKILLed at 40 of 600 lines (150 ms, 8 threads, route capped at 8), a new one started")
    base = worker_run(workdir / "wbase", 600, None)
    crash = worker_run(workdir / "wcrash", 600, 40)
    took, once = crash.split("|")
    print(f"  baseline (no crash): completed {base.split('|')[0]} after the create")
    print(f"  after the kill: completed {took} ({ratio(took, base)} the baseline); every line exactly once: {once}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["serve", "worker"], help="one scenario")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        if args.only in (None, "serve"):
            serve_scenario(Path(workdir))
        if args.only in (None, "worker"):
            worker_scenario(Path(workdir))


if __name__ == "__main__":
    main()
