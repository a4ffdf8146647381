"""The doctor's judgments, from what it read: pure functions, no Redis, no disk."""

from __future__ import annotations

from pathlib import Path

from batchq.doctor import (
    MIN_FREE_BYTES,
    Level,
    eviction,
    exit_code,
    fail,
    ok,
    persistence,
    private,
    processes,
    space,
    warn,
)
from batchq.storage import schema
from batchq.storage.procs import LIVE_S, Proc

GIB = 1 << 30


def test_persistence_an_append_only_file_is_ok_snapshots_a_warning_none_a_problem() -> None:
    assert persistence({"appendonly": "yes", "appendfsync": "everysec"}).level is Level.OK
    assert persistence({"appendonly": "yes", "appendfsync": "no"}).level is Level.WARN
    assert persistence({"appendonly": "no", "save": "3600 1"}).level is Level.WARN
    assert persistence({"appendonly": "no", "save": ""}).level is Level.FAIL


def test_eviction_anything_but_noeviction_is_a_problem() -> None:
    assert eviction({"maxmemory-policy": "noeviction", "maxmemory": "0"}).text == "noeviction (no maxmemory)"
    assert eviction({"maxmemory-policy": "noeviction", "maxmemory": str(512 << 20)}).text.endswith("512 MiB)")
    assert eviction({"maxmemory-policy": "volatile-lru"}).level is Level.FAIL


def test_space_under_a_gib_is_a_problem_under_a_tenth_a_warning() -> None:
    path = Path("/data")
    assert space(path, 100 * GIB, 50 * GIB).level is Level.OK
    assert space(path, 100 * GIB, 5 * GIB).level is Level.WARN
    assert space(path, 100 * GIB, MIN_FREE_BYTES - 1).level is Level.FAIL


def test_a_directory_open_to_others_is_a_warning() -> None:
    assert private(Path("/data/files"), 0o700).level is Level.OK
    assert private(Path("/data/files"), 0o750).level is Level.WARN


def proc(role: str, release: str = "0.2.0", version: int = schema.SCHEMA, pid: int = 1) -> Proc:
    return Proc(role, "host", pid, release, version, 0.0, 100.0)


def test_processes_one_line_each_no_worker_is_a_problem_mixed_releases_a_warning() -> None:
    found = list(processes([proc("api"), proc("worker", "0.3.0", schema.SCHEMA + 1, 2)], 105.0))
    assert [(f.level, f.subject) for f in found] == [
        (Level.OK, "api"), (Level.WARN, "worker"), (Level.WARN, "releases"),
    ]  # fmt: skip
    assert found[0].text == f"host pid 1: batchq 0.2.0 (schema {schema.SCHEMA}), up 1m45s, seen 5 s ago"
    assert [f.subject for f in processes([proc("api")], 105.0) if f.level is Level.FAIL] == ["workers"]
    assert f"last {LIVE_S:.0f} s" in next(f.text for f in processes([], 0.0) if f.subject == "workers")


def test_the_exit_code_is_1_only_with_a_problem() -> None:
    assert exit_code([ok("a", "b"), warn("c", "d")]) == 0
    assert exit_code([ok("a", "b"), fail("c", "d")]) == 1
    assert fail("redis", "no answer").line() == "FAIL redis: no answer"
    assert ok("redis", "answers").line() == "ok   redis: answers"
