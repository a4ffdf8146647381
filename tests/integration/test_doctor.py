"""``batchq doctor`` against a real deployment: Redis, the data directory, the upstream, the API and
a worker, each found healthy, then each made unhealthy."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from batchq import __version__
from batchq.local.embedded import free_port
from batchq.local.stack import Stack
from batchq.storage import schema
from batchq.storage.procs import FORGET_S, LIVE_S, Proc, Registry, this_process
from tests.integration.conftest import FAST

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = Stack(tmp_path_factory.mktemp("doctor"), env_overrides=dict(FAST), persist=True)
    try:
        yield running.start(workers=1, concurrency=4)
    finally:
        running.stop()


def doctor(stack: Stack, **env: str) -> tuple[int, list[str]]:
    ran = subprocess.run(
        [sys.executable, "-m", "batchq", "doctor"], env=stack.env() | env, capture_output=True, text=True, timeout=60
    )
    assert ran.stderr == ""
    return ran.returncode, ran.stdout.splitlines()


def one(lines: list[str], start: str) -> str:
    (found,) = [line for line in lines if line.startswith(start)]
    return found


def test_a_healthy_deployment_is_all_ok_and_exits_0(stack: Stack) -> None:
    code, lines = doctor(stack)
    assert code == 0, lines
    assert all(line.split()[0] in ("ok", "warn") for line in lines)
    assert "(Redis " in one(lines, f"ok   redis: answers at {stack.redis_url}")
    assert "append-only file" in one(lines, "ok   redis persistence:")
    assert one(lines, "ok   redis maxmemory-policy: noeviction")
    assert one(lines, f"ok   schema: {schema.SCHEMA}, set by batchq {__version__}")
    data = stack.workdir / "data"
    assert one(lines, f"ok   data dir: {data} is writable")
    assert one(lines, f"ok   data dir: {data / 'files'} is private (mode 0700)")
    assert one(lines, "ok   disk: ")
    assert stack.upstream_url in one(lines, "ok   upstream default:")
    for role, pid in (("api", stack.processes["api"].pid), ("worker", stack.processes["worker0"].pid)):
        line = one(lines, f"ok   {role}: ")
        assert f"batchq {__version__} (schema {schema.SCHEMA})" in line
        if role == "api":
            assert f"pid {pid}:" in line  # the API is the process the stack started (a worker forks)


def test_every_problem_is_one_line_and_exits_1(stack: Stack) -> None:
    db = redis.Redis.from_url(stack.redis_url or "")
    files = stack.workdir / "data" / "files"
    db.config_set("maxmemory-policy", "allkeys-lru")
    db.config_set("appendonly", "no")
    db.config_set("save", "")
    db.lpush("celery", b"{}")
    files.chmod(0o755)
    stack.kill("worker0", signal.SIGTERM)  # a clean stop takes the worker out of the registry
    try:
        code, lines = doctor(stack, BATCHQ_UPSTREAM_URL=f"http://127.0.0.1:{free_port()}")
    finally:
        db.config_set("maxmemory-policy", "noeviction")
        db.config_set("appendonly", "yes")
        files.chmod(0o700)
        db.delete("celery")
    assert code == 1
    assert one(lines, "FAIL redis persistence: none")
    assert "allkeys-lru" in one(lines, "FAIL redis maxmemory-policy:")
    assert "1 task(s)" in one(lines, "warn old celery queue:")
    assert f"{files} is open to other users (mode 0755)" in one(lines, "warn data dir:")
    assert "no answer from http://127.0.0.1:" in one(lines, "FAIL upstream default:")
    assert one(lines, "FAIL workers: none alive")
    assert one(lines, "ok   api: ")


def test_no_redis_is_one_line_and_the_rest_is_still_checked(tmp_path: Path) -> None:
    env = os.environ | {"BATCHQ_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "BATCHQ_DATA_DIR": str(tmp_path)}
    command = [sys.executable, "-m", "batchq", "doctor"]
    ran = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert ran.returncode == 1
    lines = ran.stdout.splitlines()
    assert one(lines, "FAIL redis: no answer at redis://127.0.0.1:")
    assert one(lines, f"ok   data dir: {tmp_path} is writable")
    assert not [line for line in lines if line.startswith(("ok   worker", "FAIL workers"))], "no Redis: no registry"


def test_the_registry_forgets_processes_silent_for_a_day(stack: Stack) -> None:
    registry = Registry(redis.Redis.from_url(stack.redis_url or ""))
    gone = Proc("worker", "old-host", 7, "0.2.0", schema.SCHEMA, 0.0, 0.0)
    registry.beat(gone, 1_000.0)
    assert gone.id in {p.id for p in registry.all()}
    assert gone.id not in {p.id for p in registry.live(1_000.0 + LIVE_S + 1)}, "silent: not alive"
    registry.beat(this_process("api", 1_000.0 + FORGET_S + 1), 1_000.0 + FORGET_S + 1)
    assert gone.id not in {p.id for p in registry.all()}, "a day silent: forgotten by the next beat"
