"""A whole batchq on one machine, as real processes: Redis, a mock upstream, the API, workers.

Used by ``batchq demo``, the integration tests and the benchmarks, so all three exercise the
same processes a deployment runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx2

from batchq.local.embedded import free_port, reachable, start_redis, wait_for


def _http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return httpx2.get(url, timeout=1.0).status_code < 500
        except httpx2.HTTPError:
            return False

    return check


@dataclass
class Stack:
    workdir: Path
    api_key: str = "sk-test-key"
    env_overrides: dict[str, str] = field(default_factory=dict)
    redis_url: str | None = None  # None: start a private redis-server on a free port
    mock_args: list[str] = field(default_factory=list)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    api_port: int = 0
    upstream_port: int = 0
    persist: bool = False  # the private redis-server keeps an append-only file (appendfsync everysec)
    redis_port: int = 0

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def upstream_url(self) -> str:
        return f"http://127.0.0.1:{self.upstream_port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "BATCHQ_REDIS_URL": self.redis_url or "",
            "BATCHQ_DATA_DIR": str(self.workdir / "data"),
            "BATCHQ_API_KEYS": self.api_key,
            "BATCHQ_UPSTREAM_URL": self.upstream_url,
            "PYTHONUNBUFFERED": "1",
        })  # fmt: skip
        env.update(self.env_overrides)
        return env

    def start(self, workers: int = 1, concurrency: int = 32) -> Stack:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.redis_url is None:
            self.redis_port = free_port()
            self.start_redis()
            self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.start_upstream()
        self.start_api()
        for n in range(workers):
            self.start_worker(f"worker{n}", concurrency)
        return self

    def _spawn(self, name: str, args: list[str], **env: str) -> subprocess.Popen[bytes]:
        with open(self.workdir / f"{name}.log", "ab") as log:  # the child keeps its own descriptor
            process = subprocess.Popen(
                args, env=self.env() | env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.processes[name] = process
        return process

    def start_redis(self) -> None:
        """The private redis-server, on its port and directory (again, after ``kill("redis")``)."""
        self.processes["redis"] = start_redis(self.redis_port, self.workdir / "redis", self.persist)

    def start_upstream(self) -> None:
        self.upstream_port = self.upstream_port or free_port()
        args = [sys.executable, "-m", "batchq.local.mock_upstream", "--port", str(self.upstream_port), *self.mock_args]
        self._spawn("upstream", args)
        wait_for(_http_ok(self.upstream_url + "/_stats"), 20, "mock upstream")

    def start_api(self, ready: str = "/health") -> None:
        """``ready``: the path that answers once it is up (``/livez``: whatever ``/health`` says)."""
        self.api_port = self.api_port or free_port()
        self._spawn("api", [sys.executable, "-m", "batchq", "api", "--port", str(self.api_port)])
        wait_for(_http_ok(self.api_url + ready), 30, "batchq api")

    def start_worker(self, name: str, concurrency: int = 32) -> subprocess.Popen[bytes]:
        args = [sys.executable, "-m", "batchq", "worker", "--concurrency", str(concurrency), "-n", f"{name}@%h"]
        process = self._spawn(name, [*args, "--loglevel", "WARNING"], BATCHQ_WORKER_CONCURRENCY=str(concurrency))
        wait_for(lambda: self._worker_ready(name), 60, f"worker {name}")
        return process

    def _worker_ready(self, name: str) -> bool:
        log = self.workdir / f"{name}.log"
        return log.exists() and b"ready" in log.read_bytes()

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes.pop(name)
        os.killpg(process.pid, sig)
        process.wait(30)

    def stop(self) -> None:
        for name in reversed(list(self.processes)):
            self._terminate(self.processes.pop(name))

    @staticmethod
    def _terminate(process: subprocess.Popen[bytes]) -> None:
        if process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)

    def redis_alive(self) -> bool:
        return reachable(self.redis_url or "")

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def wait_until(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise TimeoutError(what)
            time.sleep(0.1)
