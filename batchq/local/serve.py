"""``batchq serve``: a whole batchq on one machine, as the children of one command.

Redis (an embedded ``redis-server`` with append-only persistence under ``BATCHQ_DATA_DIR/redis``,
unless ``BATCHQ_REDIS_URL`` already answers), the API and one worker (which also runs the
watchdog). The embedded Redis listens on 127.0.0.1 only and wants a password: one made at random
once (``redis/password``, 0600) unless the URL names one, given to Redis in ``redis/redis.conf``
(0600; never on a command line, where ``ps`` shows it) and to the children in their environment;
``redis/url`` (0600) holds the whole URL for the other commands (``batchq top``, ``batchq keys``).
A Redis replaying a large append-only file answers LOADING: it is waited for as long as it loads.

State lives in Redis' AOF and in the data directory, so the same command started again after a
crash or a reboot picks up every unfinished batch: the watchdog re-sends the lines that were in
flight once their leases run out (``BATCHQ_LINE_LEASE_S``: the dead worker stopped renewing them),
and the dead worker's upstream slots lapse with them.

Stopping: SIGTERM or Ctrl-C stops the API and the worker (Celery's warm shutdown: lines in
flight finish, lines waiting for an upstream slot go back to their batch), then Redis, which
flushes its AOF; all within ``stop_timeout`` seconds, after which whatever still runs is killed.
A second Ctrl-C kills them at once.
The children have their own process group, so a Ctrl-C in the terminal reaches only this
supervisor and the order holds. On Linux each child also gets SIGKILL when the supervisor dies
(``PR_SET_PDEATHSIG``), so even a SIGKILL of the supervisor leaves no child behind; elsewhere the
children stay in the supervisor's process group instead.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from urllib.parse import SplitResult, unquote, urlsplit

import httpx2
import redis

from batchq.config import Settings
from batchq.domain.redis_url import is_sentinel, redact
from batchq.local import embedded
from batchq.local.embedded import knock, loaded_percent, private_file, redis_args, redis_conf, redis_password, wait_for
from batchq.storage.redis_client import connect

PR_SET_PDEATHSIG = 1
REDIS_STOP_S = 5.0  # of a stop's time, kept for Redis (at most a quarter of it)
REDIS_STOP_MIN_S = 2.0  # and at least this, even past --stop-timeout: a SIGKILL before its AOF flush loses writes
LOCAL_HOSTS = ("127.0.0.1", "localhost")  # the embedded Redis binds 127.0.0.1


class ServeError(Exception):
    """A child could not start, or the configured Redis cannot be used; the message says why."""


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking the kernel to SIGKILL the child when this process dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def arm() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the supervisor died before prctl: do not outlive it
            os._exit(1)

    return arm


@dataclass
class Supervisor:
    settings: Settings
    host: str = "127.0.0.1"
    port: int = 8000
    concurrency: int = 32
    stop_timeout: float = 30.0
    redis_silence_s: float = 30.0  # a starting Redis that answers nothing, not even LOADING, this long: an error
    loading_note_s: float = 10.0  # while Redis loads its append-only file, say so this often
    redis_url: str = ""  # the URL the children use (with the embedded Redis' password); set by start_redis
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    signals: int = 0  # SIGTERM/SIGINT received: one stops in order, two kill

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir.resolve()

    @property
    def api_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def env(self) -> dict[str, str]:
        return os.environ | {
            "BATCHQ_REDIS_URL": self.redis_url or self.settings.redis_url,
            "BATCHQ_DATA_DIR": str(self.data_dir),
            "BATCHQ_WORKER_CONCURRENCY": str(self.concurrency),
            "BATCHQ_UI_SECRET": self.settings.ui_secret or embedded.ui_secret(self.data_dir),  # the dashboard is on
        }

    def spawn(self, name: str, args: list[str], **options: object) -> subprocess.Popen[bytes]:
        arm = _die_with_parent()
        own_group = {"process_group": 0, "preexec_fn": arm} if arm else {}
        process = subprocess.Popen(args, env=self.env(), **own_group, **options)  # type: ignore[call-overload]
        self.children[name] = process
        return process  # type: ignore[no-any-return]

    def start_redis(self) -> str:
        """Use the configured Redis if it answers; otherwise start the embedded one. Says which."""
        url = self.redis_url = self.settings.redis_url
        if knock(url) != "silent":
            self._wait_redis(url, lambda: None)  # it may be loading its files
            _say(f"batchq serve: WARNING: using the Redis that already answers at {redact(url)}; {persistence(url)}")
            return f"Redis at {redact(url)} (BATCHQ_REDIS_URL; not started by batchq serve)"
        parts = urlsplit(url)
        if is_sentinel(url) or parts.scheme != "redis" or parts.hostname not in LOCAL_HOSTS:
            raise ServeError(
                f"no Redis answers at {redact(url)} (BATCHQ_REDIS_URL), and batchq serve only starts one on"
                " this machine (redis://127.0.0.1:PORT/DB): start that Redis, or unset BATCHQ_REDIS_URL"
            )
        workdir = self.data_dir / "redis"
        self._spawn_redis(parts, workdir)
        try:
            self._wait_redis(self.redis_url, lambda: self._check("redis"))
        except ServeError as error:
            raise ServeError(f"{error}; see {workdir / 'redis.log'}") from None
        return f"Redis at {redact(self.redis_url)} (embedded; append-only file in {workdir})"

    def _spawn_redis(self, parts: SplitResult, workdir: Path) -> None:
        """redis-server on 127.0.0.1 with its password in a 0600 redis.conf; ``redis_url`` names it."""
        if parts.username not in (None, "", "default"):
            raise ServeError("the embedded Redis has a password and no user names: drop the user from BATCHQ_REDIS_URL")
        workdir.mkdir(parents=True, exist_ok=True)
        workdir.chmod(0o700)  # its append-only file holds every tenant's prompts and results
        password = unquote(parts.password) if parts.password else redis_password(workdir)
        if not parts.password:
            self.redis_url = parts._replace(netloc=f":{password}@{parts.netloc.rpartition('@')[2]}").geturl()
        private_file(workdir / "url", self.redis_url + "\n")
        options = ["--appendfsync", "everysec", "--logfile", str(workdir / "redis.log")]
        args = redis_args(parts.port or 6379, workdir, True, *options, conf=redis_conf(workdir, password))
        self.spawn("redis", args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _wait_redis(self, url: str, check: Callable[[], None]) -> None:
        def loading(seconds: float) -> None:
            percent = loaded_percent(url)
            done = f" ({percent:.0f}% read)" if percent is not None else ""
            _say(f"batchq serve: redis: loading its append-only file, {seconds:.0f} s so far{done}")

        def checks() -> None:
            if self.signals:
                raise ServeError("stopped while redis was starting")
            check()

        wait_for_redis(lambda: knock(url), checks, loading, self.redis_silence_s, self.loading_note_s)

    def start(self) -> None:
        where = self.start_redis()
        batchq = [sys.executable, "-m", "batchq"]
        self.spawn("api", [*batchq, "api", "--host", self.host, "--port", str(self.port)])
        worker = ["worker", "--concurrency", str(self.concurrency), "-n", "serve@%h", "--loglevel", "INFO"]
        self.spawn("worker", [*batchq, *worker])
        self._wait("api", self._api_ready, 60)
        _say(f"batchq serve: API on {self.api_url}, one worker ({self.concurrency} threads) with the watchdog.")
        _say(f"batchq serve: {where}; files in {self.data_dir}. Ctrl-C or SIGTERM stops everything.")
        _say(f"batchq serve: dashboard: {self.api_url}/ui (sign in with an API key: {self._keys_hint()})")
        if "redis" in self.children:
            url_file = self.data_dir / "redis" / "url"
            _say(f'batchq serve: for batchq top/keys in another shell: export BATCHQ_REDIS_URL="$(cat {url_file})"')

    def _keys_hint(self) -> str:
        if self.settings.api_keys:
            return "one of BATCHQ_API_KEYS"
        return "none is set: set BATCHQ_API_KEYS, or make one with batchq keys create"

    def _api_ready(self) -> bool:
        try:
            answer = httpx2.get(self.api_url + "/health", timeout=1.0)
        except httpx2.HTTPError:
            return False
        if answer.status_code == 503 and b"deployment_mismatch" in answer.content:
            raise ServeError(answer.json()["error"]["message"])  # waiting would not fix it
        return answer.status_code == 200

    def _wait(self, name: str, ready: Callable[[], bool], timeout: float) -> None:
        def up() -> bool:
            if self.signals:
                raise ServeError(f"stopped while {name} was starting")
            self._check(name)
            return ready()

        wait_for(up, timeout, name)

    def _check(self, name: str) -> None:
        if self.children[name].poll() is not None:
            raise ServeError(f"{name} exited before it was ready (code {self.children[name].returncode})")

    def watch(self) -> int:
        """Until a signal (0) or until a child exits on its own (1: the rest are stopped)."""
        while not self.signals:
            for name, child in self.children.items():
                if child.poll() is not None:
                    _say(f"batchq serve: {name} exited (code {child.returncode}); stopping the rest.")
                    return 1
            time.sleep(0.2)
        return 0

    def stop(self) -> None:
        """The API and the worker (finishing its lines in flight), then Redis (flushing its AOF), all
        within ``stop_timeout``: Redis keeps the last ``redis_stop_s`` of it, and at least
        ``REDIS_STOP_MIN_S`` (even with ``--stop-timeout 0``); whatever still runs at its end is
        killed (its lines run again at the next start)."""
        deadline = time.monotonic() + self.stop_timeout
        redis_s = min(REDIS_STOP_S, self.stop_timeout / 4)
        self._stop_together(["api", "worker"], deadline - redis_s)
        self._stop_together(["redis"], max(deadline, time.monotonic() + REDIS_STOP_MIN_S))
        for child in self.children.values():
            self._reap(child, 0)

    def _stop_together(self, names: list[str], deadline: float) -> None:
        running = [c for n in names if (c := self.children.get(n)) is not None and c.poll() is None]
        for child in running:
            child.send_signal(signal.SIGTERM)
        for child in running:
            self._reap(child, deadline - time.monotonic())

    def _reap(self, child: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while child.poll() is None and time.monotonic() < deadline and self.signals < 2:
            time.sleep(0.05)
        if child.poll() is None:
            child.kill()
            child.wait()

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.signals += 1
        if self.signals == 1:
            _say(f"batchq serve: {signal.Signals(signum).name}: stopping (again to kill at once).")


@contextmanager
def embedded_redis(settings: Settings) -> Iterator[str]:
    """For a one-off command (``batchq deployment --adopt``) where no Redis answers: the embedded
    Redis of ``BATCHQ_DATA_DIR/redis`` (the one ``batchq serve`` runs), started for the command and
    stopped after it (its append-only file flushed). Yields its URL."""
    supervisor = Supervisor(settings, stop_timeout=REDIS_STOP_S)
    try:
        supervisor.start_redis()
        yield supervisor.redis_url
    finally:
        supervisor.stop()


def wait_for_redis(
    knock: Callable[[], str],
    check: Callable[[], None],
    loading: Callable[[float], None],
    silence_s: float = 30.0,
    note_s: float = 10.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Until ``knock`` says ``ready``. While it says ``loading`` (Redis replays its append-only
    file: minutes for a large one) there is no limit, and ``loading(seconds)`` is called every
    ``note_s``; ``silence_s`` without any answer raises ``ServeError``; ``check`` may raise too."""
    started = heard = clock()
    noted = started
    while (answer := knock()) != "ready":
        now = clock()
        if answer == "loading":
            heard = now
            if now - noted >= note_s:
                noted = now
                loading(now - started)
        elif now - heard > silence_s:
            raise ServeError(f"redis did not answer within {silence_s:.0f}s")
        check()
        sleep(0.1)


def persistence(url: str) -> str:
    """Whether the Redis at ``url`` keeps its data when it restarts, in words (CONFIG GET)."""
    client = connect(url, max_connections=1)
    try:
        config = client.config_get("appendonly") | client.config_get("save")
        return persistence_note(config.get("appendonly"), config.get("save"))
    except redis.RedisError as error:  # a managed Redis may refuse or rename CONFIG
        return f"could not check whether it persists its data (CONFIG GET: {error})"
    finally:
        client.close()


def persistence_note(appendonly: str | None, save: str | None) -> str:
    if appendonly == "yes":
        return "it keeps an append-only file (appendonly yes)"
    if save:
        return f"it keeps RDB snapshots only (save {save}): a crash loses the writes since the last one"
    return "it does not persist (appendonly no, no RDB snapshots): when it restarts, every batch is lost"


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_serve(supervisor: Supervisor) -> int:
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, supervisor.on_signal)
    try:
        supervisor.start()
        return supervisor.watch()
    except (ServeError, RuntimeError) as error:  # RuntimeError: no redis-server, or a start timed out
        _say(f"error: batchq serve: {error}")
        return 1
    finally:
        supervisor.stop()
