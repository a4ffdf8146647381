"""``batchq doctor``: a deployment checked as an operator would, one line per finding.

Redis (does it answer, does it keep its data, may it evict keys), the deployment's schema and
anything an upgrade left behind, the data directory (there, writable, private, room left), every
upstream route (does it answer), and the API, worker and scheduler processes alive now with their
releases (``batchq.storage.procs``). A finding is ``ok``, ``warn`` (worth a look) or ``FAIL`` (a
problem: batches are at risk or do not progress); any FAIL makes the exit code 1.

The judgments are pure functions of what was read (``persistence``, ``space``, ``processes``…);
the rest reads.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import stat
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import httpx2
import redis

from batchq.config import Settings
from batchq.domain.redis_url import redact
from batchq.domain.routing import Route
from batchq.storage import keys, schema
from batchq.storage.procs import LIVE_S, Proc, Registry
from batchq.storage.redis_client import connect
from batchq.storage.server import durability_config, redis_version
from batchq.version import version

MIN_FREE_BYTES = 1 << 30  # below this the data directory is full in all but name: uploads and outputs fail
LOW_FREE_SHARE = 0.10  # below this share free, a warning
PRIVATE_DIRS = ("files", "tmp", "uploads", "redis")  # every tenant's prompts and answers live in these
UPSTREAM_TIMEOUT_S = 5.0


class Level(Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Finding:
    level: Level
    subject: str
    text: str

    def line(self) -> str:
        return f"{self.level.value:<4} {self.subject}: {self.text}"


def ok(subject: str, text: str) -> Finding:
    return Finding(Level.OK, subject, text)


def warn(subject: str, text: str) -> Finding:
    return Finding(Level.WARN, subject, text)


def fail(subject: str, text: str) -> Finding:
    return Finding(Level.FAIL, subject, text)


def exit_code(findings: list[Finding]) -> int:
    return 1 if any(f.level is Level.FAIL for f in findings) else 0


def examine(settings: Settings, now: float | None = None) -> Iterator[Finding]:
    """Every finding, in the order an operator would look: Redis, the data, the upstreams, the processes."""
    now = time.time() if now is None else now
    client = connect(settings.redis_url, max_connections=2, connect_timeout_s=2.0, socket_timeout_s=5.0, retry_s=0)
    try:
        reached = yield from reach(client, settings.redis_url)
        if reached:
            yield from durability(client)
            yield from deployment(client)
        yield from data_dir(settings.data_dir.resolve())
        for route in settings.routes():
            yield upstream(route)
        if reached:
            yield from processes(Registry(client).live(now), now)
    finally:
        client.close()


# --- Redis -----------------------------------------------------------------------------------------


def reach(client: redis.Redis, url: str) -> Generator[Finding, None, bool]:
    try:
        release = redis_version(client)
    except redis.RedisError as error:
        yield fail("redis", f"no answer at {redact(url)} ({error})")
        return False
    yield ok("redis", f"answers at {redact(url)} (Redis {release})")
    return True


def durability(client: redis.Redis) -> Iterator[Finding]:
    try:
        config = durability_config(client)
    except redis.RedisError as error:  # managed Redis often refuses CONFIG
        yield warn("redis persistence", f"not checked: CONFIG GET refused ({error}); check with your provider")
        return
    yield persistence(config)
    yield eviction(config)


def persistence(config: dict[str, str]) -> Finding:
    if config.get("appendonly") == "yes":
        fsync = config.get("appendfsync", "?")
        if fsync == "no":
            return warn("redis persistence", "append-only file with appendfsync no: a crash may lose ~30 s of writes")
        return ok("redis persistence", f"append-only file (appendfsync {fsync})")
    if (config.get("save") or "").strip():
        return warn(
            "redis persistence",
            f"RDB snapshots only (save {config['save']}): a crash loses every write since the last snapshot;"
            " use appendonly yes",
        )
    return fail("redis persistence", "none (appendonly no, no save points): a restart loses every batch")


def eviction(config: dict[str, str]) -> Finding:
    policy = config.get("maxmemory-policy", "noeviction")
    limit = int(config.get("maxmemory") or 0)
    size = f"maxmemory {limit / (1 << 20):.0f} MiB" if limit else "no maxmemory"
    if policy != "noeviction":
        return fail("redis maxmemory-policy", f"{policy} ({size}): an evicted key is a lost line or batch")
    return ok("redis maxmemory-policy", f"noeviction ({size})")


def deployment(client: redis.Redis) -> Iterator[Finding]:
    found = schema.deployment(client)
    by = f" by batchq {found.release}" if found.release else ""
    if found.schema > schema.SCHEMA:
        yield warn("schema", f"{found.schema}, set{by}: newer than this batchq {version()} knows; run its doctor")
    else:
        yield ok("schema", f"{found.schema}, set{by} (this batchq {version()} writes {schema.SCHEMA})")
    left = sum(int(client.llen(name)) for name in keys.queue_lists(schema.LEGACY_QUEUE))
    if left:
        yield warn("old celery queue", f"{left} task(s) wait there; the next API or worker to start moves them")


# --- the data directory -------------------------------------------------------------------------


def data_dir(path: Path) -> Iterator[Finding]:
    if not path.is_dir():
        yield fail("data dir", f"{path} is not a directory (BATCHQ_DATA_DIR)")
        return
    yield writable(path)
    for name in PRIVATE_DIRS:
        mode = _mode(path / name)
        if mode is not None:
            yield private(path / name, mode)
    usage = shutil.disk_usage(path)
    yield space(path, usage.total, usage.free)


def writable(path: Path) -> Finding:
    probe = path / f".doctor-{secrets.token_hex(4)}"
    try:
        probe.write_bytes(b"")
    except OSError as error:
        return fail("data dir", f"{path} is not writable by this user ({error.strerror})")
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return ok("data dir", f"{path} is writable")


def _mode(path: Path) -> int | None:
    try:
        return stat.S_IMODE(path.stat().st_mode) if path.is_dir() else None
    except OSError:
        return None


def private(path: Path, mode: int) -> Finding:
    if mode & 0o077:
        return warn("data dir", f"{path} is open to other users (mode {mode:04o}); it holds tenants' data: chmod 700")
    return ok("data dir", f"{path} is private (mode {mode:04o})")


def space(path: Path, total: int, free: int) -> Finding:
    text = f"{free / (1 << 30):.1f} GiB free of {total / (1 << 30):.1f} GiB on {path}"
    if free < MIN_FREE_BYTES:
        return fail("disk", text + ": uploads answer 507 and result files cannot be written")
    if total and free / total < LOW_FREE_SHARE:
        return warn("disk", text + f" (under {LOW_FREE_SHARE:.0%})")
    return ok("disk", text)


# --- upstreams -----------------------------------------------------------------------------------


def upstream(route: Route) -> Finding:
    """Does the route answer at all (any HTTP status but 5xx is an answer: batchq sends POSTs, not GETs)."""
    url = route.url.rstrip("/") + ("/models" if route.url.rstrip("/").endswith("/v1") else "/v1/models")
    headers = {"authorization": f"Bearer {route.api_key}"} if route.api_key else {}
    subject = f"upstream {route.name}"
    try:
        answer = httpx2.get(url, headers=headers, timeout=UPSTREAM_TIMEOUT_S)
    except httpx2.HTTPError as error:
        return fail(subject, f"no answer from {route.url} ({type(error).__name__}: {error})")
    if answer.status_code >= 500:
        return warn(subject, f"{route.url} answers HTTP {answer.status_code} to GET {url}")
    return ok(subject, f"{route.url} answers (HTTP {answer.status_code} to GET {url})")


# --- processes -----------------------------------------------------------------------------------


def processes(live: list[Proc], now: float) -> Iterator[Finding]:
    for proc in live:
        yield process(proc, now)
    roles = {p.role for p in live}
    if "worker" not in roles:
        yield fail("workers", f"none alive (none registered in the last {LIVE_S:.0f} s): no batch makes progress")
    if "api" not in roles:
        yield warn("api", f"none alive (none registered in the last {LIVE_S:.0f} s)")
    releases = sorted({p.release for p in live})
    if len(releases) > 1:
        yield warn("releases", f"{len(releases)} run side by side ({', '.join(releases)}): a rolling upgrade?")


def process(proc: Proc, now: float) -> Finding:
    text = (
        f"{proc.host} pid {proc.pid}: batchq {proc.release} (schema {proc.schema}), up {_span(now - proc.started)},"
        f" seen {now - proc.seen:.0f} s ago"
    )
    if proc.schema > schema.SCHEMA:
        return warn(proc.role, text + f"; newer than this batchq {version()}")
    return ok(proc.role, text)


def _span(seconds: float) -> str:
    minutes, secs = divmod(int(max(seconds, 0)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
