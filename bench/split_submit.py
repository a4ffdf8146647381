"""A job larger than one batch: ``batchq submit FILE --wait --output out.jsonl``, killed and resumed.

    python -m bench.split_submit                          # 120,000 lines, BATCHQ_MAX_LINES=50000
    python -m bench.split_submit --lines 3000 --max-lines 1000   # a smoke run

One real batchq (Redis, mock upstream at 0 ms, API, one worker x 128 threads) with
``BATCHQ_MAX_LINES`` lowered. The CLI is SIGKILLed once its first batch exists (``--no-kill``: not
at all), then the same command runs again to the end. Prints the exit code, the merged output's
lines and distinct custom ids, the lines the server received across all batches (each once: equal
to the file's), the time, and the CLI's peak RSS (it streams: it never holds the file).
Issue #15's target: exit 0, 120,000 lines, one per custom_id, no line submitted twice.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from batchq.client import Client
from batchq.client.manifest import ChunkState, load, manifest_path
from batchq.local.stack import Stack

CHAT = "/v1/chat/completions"


def write_input(path: Path, lines: int) -> None:
    body = {"model": "bench", "messages": [{"role": "user", "content": "hi"}]}
    with open(path, "wb") as sink:
        for i in range(lines):
            sink.write(orjson.dumps({"custom_id": f"q{i}", "method": "POST", "url": CHAT, "body": body}) + b"\n")


def first_batch_created(output: Path) -> bool:
    manifest = load(manifest_path(output))
    return (
        manifest is not None
        and manifest.chunks[0].state is not ChunkState.PLANNED
        and bool(manifest.chunks[0].batch_id)
    )


def run_measured(command: list[str], env: dict[str, str]) -> tuple[int, float]:
    """Run the CLI to the end; its exit code and peak RSS (VmHWM, MB), read while it runs."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    peak = 0.0
    while process.poll() is None:
        peak = max(peak, _vm_hwm_mb(process.pid))
        time.sleep(0.2)
    return process.returncode, peak


def _vm_hwm_mb(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    line = next((row for row in status.splitlines() if row.startswith("VmHWM:")), "VmHWM: 0 kB")
    return int(line.split()[1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=120_000)
    parser.add_argument("--max-lines", type=int, default=50_000)
    parser.add_argument("--no-kill", action="store_true")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-split-"))
    source, output = workdir / "in.jsonl", workdir / "out.jsonl"
    write_input(source, args.lines)
    env = {"BATCHQ_MAX_LINES": str(args.max_lines), "BATCHQ_API_RPM_PER_KEY": "0"}
    stack = Stack(workdir / "stack", api_key="sk-bench", env_overrides=env, mock_args=["--latency-ms", "0"])
    with stack.start(workers=1, concurrency=128):
        cli_env = os.environ | {"BATCHQ_API_URL": stack.api_url, "BATCHQ_API_KEY": stack.api_key}
        command = [sys.executable, "-m", "batchq", "submit", str(source), "--endpoint", CHAT, "--wait"]
        command += ["--output", str(output), "--poll-interval", "1"]
        started = time.monotonic()
        if not args.no_kill:
            first = subprocess.Popen(command, env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while not first_batch_created(output) and first.poll() is None:
                time.sleep(0.05)
            first.send_signal(signal.SIGKILL)
            first.wait()
            print(f"killed the CLI {time.monotonic() - started:.1f} s in, after its first batch was created")
        code, peak_mb = run_measured(command, cli_env)
        elapsed = time.monotonic() - started
        with Client(stack.api_url, stack.api_key) as bq:
            submitted = sum(b.request_counts.total for b in bq.list(limit=100).data)
            batches = len(bq.list(limit=100).data)
    ids = [orjson.loads(line)["custom_id"] for line in output.read_bytes().splitlines()]
    print(f"== batchq submit: {args.lines} lines, BATCHQ_MAX_LINES={args.max_lines}")
    print(f"exit code {code} (target 0); output lines {len(ids)}, distinct custom ids {len(set(ids))}")
    print(f"lines submitted across {batches} batches: {submitted} (target: {args.lines}, each once)")
    print(f"{elapsed:.1f} s in all (kill and resume included); the resumed CLI's peak RSS {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
