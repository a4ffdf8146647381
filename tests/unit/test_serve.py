"""batchq serve's supervisor without processes: which Redis it uses, how it stops, what it watches."""

from __future__ import annotations

import signal
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from batchq import cli
from batchq.config import Settings, get_settings
from batchq.local import serve
from batchq.local.embedded import conf_string
from batchq.local.serve import ServeError, Supervisor, persistence_note, wait_for_redis


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


def supervisor(url: str = "redis://127.0.0.1:6399/0", data_dir: Path = Path("/nonexistent"), **kw: Any) -> Supervisor:
    return Supervisor(Settings(_env_file=None, redis_url=url, data_dir=data_dir), **kw)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "url", ["sentinel://127.0.0.1:26379/m", "redis://redis.example.com:6379/0", "rediss://127.0.0.1:6379/0"]
)
def test_a_redis_it_cannot_start_here_is_an_error_naming_it(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serve, "knock", lambda *_: "silent")
    with pytest.raises(ServeError, match=r"no Redis answers at .* only starts one on this machine"):
        supervisor(url).start_redis()


def test_a_redis_that_answers_is_used_unchanged_with_one_warning_on_its_persistence(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(serve, "knock", lambda *_: "ready")
    monkeypatch.setattr(serve, "persistence", lambda url: f"persistence of {url}")
    running = supervisor("redis://:pw@127.0.0.1:6399/0")
    assert (
        running.start_redis()
        == "Redis at redis://:***@127.0.0.1:6399/0 (BATCHQ_REDIS_URL; not started by batchq serve)"
    )
    assert running.children == {}
    assert running.env()["BATCHQ_REDIS_URL"] == "redis://:pw@127.0.0.1:6399/0"
    assert capsys.readouterr().err.splitlines() == [
        "batchq serve: WARNING: using the Redis that already answers at redis://:***@127.0.0.1:6399/0;"
        " persistence of redis://:pw@127.0.0.1:6399/0"
    ]


@pytest.mark.parametrize(
    ("appendonly", "save", "says"),
    [
        ("yes", "", "it keeps an append-only file"),
        ("no", "3600 1 300 100", "it keeps RDB snapshots only (save 3600 1 300 100): a crash loses"),
        ("no", "", "it does not persist"),
        (None, None, "it does not persist"),
    ],
)
def test_persistence_is_said_from_appendonly_and_save(appendonly: str | None, save: str | None, says: str) -> None:
    assert persistence_note(appendonly, save).startswith(says)


class Spawned:
    """Records what ``Supervisor.spawn`` was asked to run, instead of running it."""

    def __init__(self, running: Supervisor) -> None:
        self.args: list[list[str]] = []
        running.spawn = self.spawn  # type: ignore[method-assign]

    def spawn(self, name: str, args: list[str], **_: object) -> None:
        self.args.append(args)


@pytest.fixture
def no_wait(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(serve, "knock", lambda *_: "silent")  # nothing answers at the configured URL
    monkeypatch.setattr(serve, "wait_for_redis", lambda *_: None)  # the embedded one "comes up" at once
    yield


@pytest.mark.usefixtures("no_wait")
def test_the_embedded_redis_binds_loopback_with_a_password_in_private_files_only(tmp_path: Path) -> None:
    running = supervisor("redis://127.0.0.1:6399/0", tmp_path)
    spawned = Spawned(running)
    assert (
        running.start_redis()
        == f"Redis at redis://:***@127.0.0.1:6399/0 (embedded; append-only file in {tmp_path / 'redis'})"
    )
    workdir = tmp_path / "redis"
    password = (workdir / "password").read_text().strip()
    assert len(password) == 48
    url = f"redis://:{password}@127.0.0.1:6399/0"
    assert running.env()["BATCHQ_REDIS_URL"] == url
    assert (workdir / "url").read_text() == url + "\n"
    (args,) = spawned.args
    assert args[1] == str(workdir / "redis.conf") and args[args.index("--bind") + 1] == "127.0.0.1"
    assert "--requirepass" not in args and not any(password in arg for arg in args), "ps shows the command line"
    assert f'requirepass "{password}"' in (workdir / "redis.conf").read_text().splitlines()
    for path in ("password", "url", "redis.conf"):
        assert stat.S_IMODE((workdir / path).stat().st_mode) == 0o600, path
    assert stat.S_IMODE(workdir.stat().st_mode) == 0o700, "the append-only file holds every tenant's data"

    again = supervisor("redis://127.0.0.1:6399/0", tmp_path)
    Spawned(again)
    again.start_redis()
    assert again.env()["BATCHQ_REDIS_URL"] == url, "the password is made once"


@pytest.mark.usefixtures("no_wait")
def test_a_password_in_the_url_is_the_embedded_redis_password_and_the_url_stays(tmp_path: Path) -> None:
    running = supervisor("redis://:p%40ss%22w@localhost:6399/2", tmp_path)
    Spawned(running)
    running.start_redis()
    assert running.env()["BATCHQ_REDIS_URL"] == "redis://:p%40ss%22w@localhost:6399/2"
    assert 'requirepass "p@ss\\x22w"' in (tmp_path / "redis" / "redis.conf").read_text()
    assert not (tmp_path / "redis" / "password").exists()


def test_conf_strings_escape_quotes_backslashes_and_non_ascii() -> None:
    assert conf_string('a b"c\\dé') == '"a b\\x22c\\x5cd\\xc3\\xa9"'


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def waits(answers: list[str], step: float, **kw: Any) -> tuple[float, list[float]]:
    """Runs ``wait_for_redis`` over ``answers``, each ``step`` s apart; returns the time it took and the notes."""
    clock, notes, replies = Clock(), [], iter(answers)

    def knock() -> str:
        clock.now += step
        return next(replies)

    wait_for_redis(knock, lambda: None, notes.append, clock=clock, sleep=clock.sleep, **kw)
    return clock.now, notes


def test_a_redis_loading_its_file_is_waited_for_past_the_silence_limit_with_notes() -> None:
    took, notes = waits(["silent"] * 3 + ["loading"] * 1000 + ["ready"], step=0.9, silence_s=30, note_s=60)
    assert took > 900  # a 15-minute load, 30 times the limit on silence
    assert len(notes) == int(took // 60) and notes[0] == pytest.approx(60, abs=1.5)  # one a minute


def test_a_redis_that_answers_nothing_fails_after_the_silence_limit() -> None:
    with pytest.raises(ServeError, match="redis did not answer within 30s"):
        waits(["silent"] * 1000, step=0.9, silence_s=30)


def test_silence_after_loading_counts_from_the_last_answer() -> None:
    with pytest.raises(ServeError):
        waits(["loading"] * 100 + ["silent"] * 100, step=1.0, silence_s=30)
    took, _ = waits(["loading"] * 100 + ["silent"] * 25 + ["ready"], step=1.0, silence_s=30)
    assert took > 120


def test_a_redis_that_exits_while_loading_ends_the_wait() -> None:
    def exited() -> None:
        raise ServeError("redis exited before it was ready (code 1)")

    with pytest.raises(ServeError, match="exited"):
        wait_for_redis(lambda: "loading", exited, print, sleep=lambda _: None)


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


def test_a_stubborn_api_and_worker_share_one_stop_timeout_and_redis_keeps_its_part() -> None:
    """Both are asked at once and killed at the same deadline, so the whole stop fits in the
    worker's stop timeout (not the API's wait, then the worker's, then Redis's)."""
    log: list[tuple[str, int]] = []
    running = supervisor(stop_timeout=0.2)
    running.children = {  # type: ignore[dict-item]
        "redis": StandInChild("redis", log, stubborn=True),
        "api": StandInChild("api", log, stubborn=True),
        "worker": StandInChild("worker", log, stubborn=True),
    }
    running.stop()
    assert log == [
        ("api", signal.SIGTERM), ("worker", signal.SIGTERM), ("api", signal.SIGKILL), ("worker", signal.SIGKILL),
        ("redis", signal.SIGTERM), ("redis", signal.SIGKILL),
    ]  # fmt: skip


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


@dataclass
class FlushingRedis(StandInChild):
    """Ends a few polls after its SIGTERM (it writes its append-only file first)."""

    polls_left: int = 3
    termed: bool = False

    def poll(self) -> int | None:
        if self.termed and self.returncode is None:
            self.polls_left -= 1
            if self.polls_left <= 0:
                self.returncode = 0
        return self.returncode

    def send_signal(self, sig: int) -> None:
        self.log.append((self.name, sig))
        self.termed = True


def test_even_a_stop_timeout_of_zero_leaves_redis_time_to_flush() -> None:
    log: list[tuple[str, int]] = []
    running = supervisor(stop_timeout=0)
    redis_child = FlushingRedis("redis", log)
    running.children = {"worker": StandInChild("worker", log, stubborn=True), "redis": redis_child}  # type: ignore[dict-item]
    running.stop()
    assert ("worker", signal.SIGKILL) in log, "the worker is killed at once"
    assert log[-1] == ("redis", signal.SIGTERM) and redis_child.returncode == 0, "redis was not killed"
