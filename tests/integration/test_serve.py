"""``batchq serve`` as a user runs it: killed hard mid-batch, started again, stopped with SIGTERM.

It runs in its own process group on free ports with a private data directory (its embedded Redis
keeps an append-only file there) and the mock upstream.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2
import pytest
import redis
from openai import APIError, OpenAI

from batchq.config import Settings
from batchq.local import serve as serve_module
from batchq.local.embedded import free_port, redis_args, wait_for
from batchq.local.serve import Supervisor
from batchq.local.stack import Stack
from tests.integration.conftest import FAST
from tests.integration.helpers import assert_exactly_once, chat_row, submit, wait

pytestmark = pytest.mark.integration
STOP_TIMEOUT_S = 10


class Serve:
    """One ``batchq serve`` command line, started (and started again) with the same settings."""

    def __init__(self, workdir: Path, upstream_url: str) -> None:
        self.workdir = workdir
        self.api_port = free_port()
        self.env = os.environ | FAST | {
            "BATCHQ_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
            "BATCHQ_DATA_DIR": str(workdir / "data"),
            "BATCHQ_API_KEYS": "sk-serve",
            "BATCHQ_UPSTREAM_URL": upstream_url,
            "BATCHQ_UPSTREAM_TIMEOUT_S": "60",  # a ghost slot that lived this long would outlast the waits
            "BATCHQ_LOG_LEVEL": "WARNING",
        }  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self) -> int:
        args = [sys.executable, "-m", "batchq", "serve", "--port", str(self.api_port), "--concurrency", "32"]
        args += ["--stop-timeout", str(STOP_TIMEOUT_S)]
        with open(self.workdir / "serve.log", "ab") as log:
            self.process = subprocess.Popen(args, env=self.env, stdout=log, stderr=log, start_new_session=True)
        wait_for(self._ready, 60, "batchq serve")
        return self.process.pid

    def _ready(self) -> bool:
        assert self.process is not None and self.process.poll() is None, self.log()
        try:
            return httpx2.get(self.api_url + "/health", timeout=1).status_code == 200
        except httpx2.HTTPError:
            return False

    def log(self) -> str:
        return (self.workdir / "serve.log").read_text(errors="replace")[-4000:]

    def signal_group(self, sig: int) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, sig)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.signal_group(signal.SIGKILL)
            self.process.wait(10)


def children_of(pid: int) -> list[int]:
    """The child processes of ``pid`` (from /proc: the test runs where PR_SET_PDEATHSIG does)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
            if int(fields[1]) == pid:
                found[int(stat.parent.name)] = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
    names = sorted("redis" if b"redis-server" in args[0] else args[3].decode() for args in found.values())
    assert names == ["api", "redis", "worker"], found
    return list(found)


def assert_gone(pids: list[int], timeout: float = 10) -> None:
    """No process left, not even a zombie (the supervisor reaps its children)."""
    wait_for(lambda: not any(map(_alive, pids)), timeout, "every child of batchq serve to end")


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Stack]:
    mock = Stack(tmp_path / "upstream", mock_args=["--latency-ms", "100"])
    mock.workdir.mkdir()
    mock.start_upstream()
    yield mock
    mock.stop()


def test_serve_stopped_mid_batch_then_killed_whole_resumes_and_stops_cleanly(tmp_path: Path, upstream: Stack) -> None:
    serve = Serve(tmp_path, upstream.upstream_url)
    try:
        _stop_kill_and_resume(serve)
    except BaseException:
        print(serve.log())
        raise
    finally:
        serve.stop()


def _stop_kill_and_resume(serve: Serve) -> None:
    """The issue's run (1,500 lines at 100 ms, 32 threads, the default lease): a SIGTERM mid-batch
    stops every process within the stop timeout; started again, the batch goes on; the whole tree
    SIGKILLed and started again, it completes within 30 s of the API's answer, every line once
    (a dead worker's upstream slots, lasting the upstream timeout, would hold the window 70 s)."""
    supervisor = serve.start()
    sdk = OpenAI(base_url=serve.api_url + "/v1", api_key="sk-serve", max_retries=0)
    rows = [chat_row(f"s{i}", f"s {i}", latency_ms=100) for i in range(1500)]
    batch = submit(sdk, rows)
    _wait_done(sdk, batch.id, 200)
    children = children_of(supervisor)
    assert serve.process is not None
    serve.process.send_signal(signal.SIGTERM)  # mid-batch: lines in flight finish, the rest wait
    assert serve.process.wait(STOP_TIMEOUT_S + 5) == 0
    assert_gone(children, timeout=1)
    assert "SIGTERM: stopping" in serve.log()
    stopped_at = _done(sdk, batch.id, default=-1)
    assert stopped_at == -1, "nothing answers while batchq serve is down"

    supervisor = serve.start()
    resumed = _done(sdk, batch.id)
    assert resumed < 1500, "the batch was stopped mid-way"
    _wait_done(sdk, batch.id, resumed + 200)
    children = children_of(supervisor)  # redis-server, the API, the worker
    serve.signal_group(signal.SIGKILL)  # the whole process group: a crash, or the power cable
    assert serve.process.wait(10) == -signal.SIGKILL
    assert_gone(children)  # they die with the supervisor (PR_SET_PDEATHSIG), in their own groups

    started_at = time.monotonic()
    supervisor = serve.start()  # the same command again: the embedded Redis reloads its AOF
    ready_after = time.monotonic() - started_at
    final = wait(sdk, batch.id, timeout=30)  # from the API's answer: a loaded machine starts slowly
    done_after = time.monotonic() - started_at
    print(f"\nserve: API ready {ready_after:.1f}s after the restart, batch done {done_after:.1f}s after it")
    assert final.status == "completed"
    assert_exactly_once(sdk, final, [r["custom_id"] for r in rows])

    children = children_of(supervisor)
    serve.process.send_signal(signal.SIGTERM)
    assert serve.process.wait(STOP_TIMEOUT_S + 5) == 0
    assert_gone(children, timeout=1)


def _wait_done(sdk: OpenAI, batch_id: str, lines: int) -> None:
    deadline = time.monotonic() + 30
    while _done(sdk, batch_id) < lines:
        assert time.monotonic() < deadline, f"the batch never reached {lines} lines"
        time.sleep(0.05)


def _done(sdk: OpenAI, batch_id: str, default: int = 0) -> int:
    try:
        counts = sdk.batches.retrieve(batch_id).request_counts
    except APIError:  # down: the caller says what it expects
        return default
    return counts.completed + counts.failed if counts else 0


@pytest.mark.parametrize("role", ["api", "worker"])
def test_api_and_worker_without_redis_say_so_in_one_line(role: str) -> None:
    env = os.environ | {"BATCHQ_REDIS_URL": f"redis://:secret@127.0.0.1:{free_port()}/0"}
    ran = subprocess.run([sys.executable, "-m", "batchq", role], env=env, capture_output=True, text=True, timeout=60)
    assert ran.returncode == 1
    assert ran.stdout == ""
    (line,) = ran.stderr.splitlines()
    assert line.startswith(f"error: batchq {role}: no Redis answers at redis://:***@127.0.0.1:")
    assert "batchq serve" in line and "BATCHQ_REDIS_URL" in line and "secret" not in line


def test_the_embedded_redis_wants_its_password_and_is_waited_for_while_it_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real redis-server replaying a real append-only file, slowed down (``key-load-delay``) so
    that loading outlasts the limit on silence: the supervisor waits it out and says how far it is."""
    settings = Settings(_env_file=None, redis_url=f"redis://127.0.0.1:{free_port()}/0", data_dir=tmp_path)  # type: ignore[call-arg]
    first = Supervisor(settings)
    try:
        first.start_redis()
        pid = first.children["redis"].pid
        assert first.redis_url != settings.redis_url
        with pytest.raises(redis.AuthenticationError):  # NOAUTH: the URL without the password
            redis.Redis.from_url(settings.redis_url).ping()
        password = urlsplit(first.redis_url).password
        assert password and password.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
        with redis.Redis.from_url(first.redis_url) as client:
            pipe = client.pipeline(transaction=False)
            for i in range(50_000):
                pipe.set(f"k{i}", "v")
            pipe.execute()
    finally:
        first.stop()  # SIGTERM: Redis flushes its append-only file

    def slowed(*args: Any, **kw: Any) -> list[str]:  # about 90 µs per command replayed
        return [*redis_args(*args, **kw), "--key-load-delay", "10"]

    monkeypatch.setattr(serve_module, "redis_args", slowed)
    second = Supervisor(settings, redis_silence_s=2.0, loading_note_s=0.5)
    started = time.monotonic()
    try:
        second.start_redis()
        took = time.monotonic() - started
        with redis.Redis.from_url(second.redis_url) as client:
            assert client.dbsize() == 50_000
    finally:
        second.stop()
    notes = [line for line in capsys.readouterr().err.splitlines() if "loading its append-only file" in line]
    print(f"\nloading took {took:.1f}s; {notes[-1] if notes else 'no note'}")
    assert took > second.redis_silence_s, "loading outlasted the limit on silence"
    assert notes and any("% read)" in line for line in notes)
