"""A gateway's rate limit: batchq behind the mock's fixed window (429 at once, without Retry-After).

    python -m bench.ratelimit                      # 1,500 lines behind 600 requests a minute
    python -m bench.ratelimit --limit 60 --window 6 --lines 300   # a quicker look
    python -m bench.ratelimit --litellm /tmp/litellm-venv/bin/litellm   # a real LiteLLM proxy instead

The gateway (as LiteLLM's proxy with a model's ``rpm``) admits ``limit`` requests per fixed
window and answers every other request at once with a 429 and no Retry-After. Prints the failed
lines (target 0), the 429s batchq drew, and its lines/s against the best any client can do: the
window's first request starts the clock, so ``lines`` take at least ``ceil(lines / limit) - 1``
windows (target >= 0.8 of that pace). The upstream behind the gateway answers in 50 ms.

With ``--litellm`` the gateway is a real LiteLLM proxy (pinned 1.82.6, installed apart: it is no
dependency of batchq) with the model's ``rpm`` set to the limit and its own retries off, in front
of the mock; it, too, answers 429 at once without Retry-After (per wall-clock minute).
"""

from __future__ import annotations

import argparse
import math
import subprocess
import tempfile
import time
from pathlib import Path

import httpx2

from batchq.local.embedded import free_port
from batchq.local.stack import Stack
from bench.run import rows

CHAT = "/v1/chat/completions"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1500)
    parser.add_argument("--limit", type=int, default=600, help="requests admitted per window")
    parser.add_argument("--window", type=float, default=60.0, help="the window, seconds")
    parser.add_argument("--litellm", help="the litellm executable: a real LiteLLM proxy as the gateway")
    args = parser.parse_args()
    mock = ["--latency-ms", "50", "--window-limit", str(args.limit), "--window-s", str(args.window)]
    env = {"BATCHQ_API_RPM_PER_KEY": "0"}
    proxy = None
    with tempfile.TemporaryDirectory(prefix="batchq-ratelimit-") as tmp:
        stack = Stack(Path(tmp), api_key="sk-bench", env_overrides=env, mock_args=mock, upstream_port=free_port())
        if args.litellm:
            stack.mock_args = ["--latency-ms", "50"]
            args.window = 60.0
            proxy, env["BATCHQ_UPSTREAM_URL"] = start_litellm(args.litellm, Path(tmp), stack.upstream_port, args.limit)
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
        if proxy is not None:
            proxy.terminate()
            proxy.wait(10)
    windows = math.ceil(args.lines / args.limit) - 1
    best = args.lines / (windows * args.window) if windows else float("inf")
    counts = batch["request_counts"]
    print(f"== ratelimit: {args.lines} lines behind {args.limit} requests per fixed {args.window:g} s window")
    print(f"  status        {batch['status']}: {counts['completed']} completed, {counts['failed']} failed (target 0)")
    print(f"  gateway       {'LiteLLM proxy (rpm ' + str(args.limit) + ')' if args.litellm else 'the mock'}")
    print(
        f"  upstream      {stats['by_status']}"
        + ("  (behind the proxy: its 429s never reach it)" if args.litellm else "")
    )
    print(f"  batchq        {args.lines / seconds:8.2f} lines/s  ({seconds:.1f} s create -> completed)")
    print(
        f"  best possible {best:8.2f} lines/s  ({windows} windows) -> batchq = {args.lines / seconds / best:.2f} of it"
    )
    print(f"  allowed rate  {args.limit / args.window:8.2f} requests/s")


def start_litellm(executable: str, workdir: Path, upstream_port: int, rpm: int) -> tuple[subprocess.Popen[bytes], str]:
    """A LiteLLM proxy in front of the mock: the model ``bench`` with ``rpm``, no retries."""
    config = workdir / "litellm.yaml"
    config.write_text(
        "model_list:\n  - model_name: bench\n    litellm_params:\n      model: openai/bench\n"
        f"      api_base: http://127.0.0.1:{upstream_port}/v1\n      api_key: sk-none\n      rpm: {rpm}\n"
        "router_settings:\n  num_retries: 0\n  routing_strategy: usage-based-routing-v2\n"
        "litellm_settings:\n  num_retries: 0\n"
    )
    port = free_port()
    log = (workdir / "litellm.log").open("wb")
    cmd = [executable, "--config", str(config), "--port", str(port), "--num_workers", "1"]
    proxy = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx2.get(url + "/health/liveliness", timeout=2).status_code == 200:
                return proxy, url
        except httpx2.TransportError:
            pass
        time.sleep(0.5)
    proxy.terminate()
    raise RuntimeError("the LiteLLM proxy did not start")


if __name__ == "__main__":
    main()
