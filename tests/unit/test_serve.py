"""batchq serve's supervisor without processes: which Redis it uses, how it stops, what it watches."""

from __future__ import annotations

import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from batchq import cli, serve
from batchq.config import Settings, get_settings
from batchq.serve import ServeError, Supervisor


@dataclass
class StandInChild:
    """Stands in for a ``Popen``: records signals; ends on the first SIGTERM unless stubborn."""

    name: str
    log: list[tuple[str, int]]
    stubborn: bool = False
    returncode: int | None = None
    signals: list[int] = field(default_factory=list)

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, sig: int) -> None:
        self.log.append((self.name, sig))
        if not self.stubborn:
            self.returncode = 0

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)
        self.returncode = -9

    def wait(self, timeout: float | None = None) -> int | None:
        return self.returncode


def supervisor(url: str = "redis://127.0.0.1:6399/0", **kw: Any) -> Supervisor:
    return Supervisor(Settings(_env_file=None, redis_url=url, data_dir=Path("/nonexistent")), **kw)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "url", ["sentinel://127.0.0.1:26379/m", "redis://redis.example.com:6379/0", "rediss://127.0.0.1:6379/0"]
)
def test_a_redis_it_cannot_start_here_is_an_error_naming_it(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serve, "reachable", lambda *_: False)
    with pytest.raises(ServeError, match=r"no Redis answers at .* only starts one on this machine"):
        supervisor(url).start_redis()


def test_a_redis_that_answers_is_used_and_none_started(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serve, "reachable", lambda *_: True)
    running = supervisor("redis://:pw@127.0.0.1:6399/0")
    assert (
        running.start_redis()
        == "Redis at redis://:***@127.0.0.1:6399/0 (BATCHQ_REDIS_URL; not started by batchq serve)"
    )
    assert running.children == {}


def test_stop_ends_the_api_then_the_worker_then_redis() -> None:
    log: list[tuple[str, int]] = []
    running = supervisor()
    running.children = {name: StandInChild(name, log) for name in ("redis", "api", "worker")}  # type: ignore[misc]
    running.stop()
    assert log == [("api", signal.SIGTERM), ("worker", signal.SIGTERM), ("redis", signal.SIGTERM)]


def test_a_worker_past_its_stop_timeout_is_killed_and_redis_still_stopped() -> None:
    log: list[tuple[str, int]] = []
    running = supervisor(stop_timeout=0.1)
    running.children = {"worker": StandInChild("worker", log, stubborn=True), "redis": StandInChild("redis", log)}  # type: ignore[dict-item]
    running.stop()
    assert log == [("worker", signal.SIGTERM), ("worker", signal.SIGKILL), ("redis", signal.SIGTERM)]


def test_a_second_signal_kills_at_once() -> None:
    log: list[tuple[str, int]] = []
    running = supervisor(stop_timeout=60)
    running.children = {"worker": StandInChild("worker", log, stubborn=True)}  # type: ignore[dict-item]
    running.on_signal(signal.SIGINT, None)
    running.on_signal(signal.SIGINT, None)
    running.stop()  # returns at once instead of waiting 60 s
    assert log == [("worker", signal.SIGTERM), ("worker", signal.SIGKILL)]


def test_watch_returns_1_when_a_child_exits_on_its_own_and_0_on_a_signal() -> None:
    running = supervisor()
    running.children = {"api": StandInChild("api", [], returncode=3)}  # type: ignore[dict-item]
    assert running.watch() == 1
    running.children = {"api": StandInChild("api", [])}  # type: ignore[dict-item]
    running.on_signal(signal.SIGTERM, None)
    assert running.watch() == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_children_die_with_the_supervisor_on_linux() -> None:
    assert callable(serve._die_with_parent())


def test_a_malformed_setting_is_one_line_not_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHQ_REDIS_URL", "sentinel://a:26379")
    get_settings.cache_clear()
    try:
        ran = CliRunner().invoke(cli.app, ["worker"])
    finally:
        get_settings.cache_clear()
    assert ran.exit_code == 1
    assert ran.output.splitlines() == [
        "error: BATCHQ_REDIS_URL: Value error, name the master after the Sentinels:"
        " sentinel://host:26379,host:26379/<master-name>"
    ]
