"""Redis Sentinel: one master, one replica, three Sentinels on loopback; the master is SIGKILLed mid-batch.

The API and the worker reach Redis only through ``BATCHQ_REDIS_URL=sentinel://.../batchq``. After the
failover the batch completes with every line exactly once, and the test prints how long the API
answered errors (the figure in docs/operations.md).
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import openai
import pytest
import redis
from openai.types import Batch

from batchq.local.embedded import free_port, redis_binary, start_redis, wait_for
from batchq.local.stack import Stack
from tests.integration.conftest import FAST, _dump_logs
from tests.integration.helpers import TERMINAL, assert_exactly_once, chat_row, client, submit

pytestmark = pytest.mark.integration
MASTER = "batchq"


@dataclass
class SentinelSet:
    """A master, a replica and three Sentinels, each a real redis-server on a free loopback port."""

    workdir: Path
    master_port: int = 0
    sentinel_ports: list[int] = field(default_factory=list)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"sentinel://{','.join(f'127.0.0.1:{p}' for p in self.sentinel_ports)}/{MASTER}"

    def start(self) -> SentinelSet:
        self.master_port, replica = free_port(), free_port()
        self.processes["master"] = start_redis(self.master_port, self.workdir / "master")
        replicaof = ("--replicaof", "127.0.0.1", str(self.master_port))
        self.processes["replica"] = start_redis(replica, self.workdir / "replica", False, *replicaof)
        wait_for(lambda: _in_sync(replica), 15, "the replica's first sync")
        for n in range(3):
            self.sentinel_ports.append(free_port())
            self.processes[f"sentinel{n}"] = self._sentinel(n, self.sentinel_ports[-1])
        wait_for(self._sentinels_agree, 20, "three Sentinels that know the master, the replica and each other")
        return self

    def _sentinel(self, n: int, port: int) -> subprocess.Popen[bytes]:
        conf = self.workdir / f"sentinel{n}.conf"  # Sentinel rewrites its config file: one each
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {self.workdir}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {self.master_port} 2\n"
            f"sentinel down-after-milliseconds {MASTER} 500\n"
            f"sentinel failover-timeout {MASTER} 2000\n"
        )
        with open(self.workdir / f"sentinel{n}.log", "ab") as log:  # the child keeps its own descriptor
            return subprocess.Popen([redis_binary(), str(conf), "--sentinel"], stdout=log, stderr=log)

    def _sentinels_agree(self) -> bool:
        for port in self.sentinel_ports:
            try:
                with redis.Redis(port=port, socket_timeout=0.5) as sentinel:
                    if len(sentinel.sentinel_slaves(MASTER)) < 1 or len(sentinel.sentinel_sentinels(MASTER)) < 2:
                        return False
            except redis.RedisError:
                return False
        return True

    def master_address(self) -> tuple[str, int]:
        with redis.Redis(port=self.sentinel_ports[0], socket_timeout=0.5) as sentinel:
            found = sentinel.sentinel_get_master_addr_by_name(MASTER)
        return str(found[0]), int(found[1])

    def kill_master(self) -> None:
        self.processes["master"].send_signal(signal.SIGKILL)
        self.processes["master"].wait(10)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(10)


def _in_sync(port: int) -> bool:
    try:
        with redis.Redis(port=port, socket_timeout=0.5) as replica:
            return bool(replica.info("replication").get("master_link_status") == "up")
    except redis.RedisError:
        return False


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelSet]:
    running = SentinelSet(tmp_path / "sentinel")
    running.workdir.mkdir()
    try:
        yield running.start()
    finally:
        running.stop()


@dataclass
class Poller:
    """GETs the batch every 50 ms from a thread; records (time, status code or 0 for no answer, seconds)."""

    url: str
    headers: dict[str, str]
    answers: list[tuple[float, int, float]] = field(default_factory=list)
    done: int = 0  # lines finished, as the last 200 said
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx2.Client(headers=self.headers, timeout=10) as http:
            while not self.stop.wait(0.05):
                asked = time.monotonic()
                try:
                    answer = http.get(self.url)
                except httpx2.HTTPError:
                    self.answers.append((asked, 0, time.monotonic() - asked))
                    continue
                if answer.status_code == 200:
                    counts = answer.json()["request_counts"]
                    self.done = counts["completed"] + counts["failed"]
                self.answers.append((asked, answer.status_code, time.monotonic() - asked))

    def error_window(self, since: float) -> float:
        """Seconds from the first to the last answer after ``since`` that was not a 200 (answered at)."""
        errors = [t + took for t, code, took in self.answers if t + took >= since and code != 200]
        return errors[-1] - errors[0] if errors else 0.0

    def slowest(self, since: float) -> float:
        """The longest answer among those that came after ``since``."""
        return max(took for t, _, took in self.answers if t + took >= since)


def test_a_failover_mid_batch_loses_and_duplicates_nothing(sentinels: SentinelSet, tmp_path: Path) -> None:
    env = FAST | {"BATCHQ_LINE_LEASE_S": "3"}
    stack = Stack(tmp_path / "stack", env_overrides=env, redis_url=sentinels.url)
    try:
        stack.start(workers=1, concurrency=8)
        _run_through_a_failover(stack, sentinels)
    except BaseException:
        _dump_logs(stack.workdir)
        raise
    finally:
        stack.stop()


def _run_through_a_failover(stack: Stack, sentinels: SentinelSet) -> None:
    sdk = client(stack, user="failover")
    rows = [chat_row(f"f{i}", f"f {i}", latency_ms=200) for i in range(300)]
    batch = submit(sdk, rows)
    poller = Poller(f"{stack.api_url}/v1/batches/{batch.id}", {"Authorization": f"Bearer {stack.api_key}"})
    poller.headers["X-On-Behalf-Of"] = "failover"
    threading.Thread(target=poller.run, daemon=True).start()
    stack.wait_until(lambda: poller.done >= 60, 30, "the batch is under way")
    old = sentinels.master_address()
    killed_at = time.monotonic()
    sentinels.kill_master()
    stack.wait_until(lambda: sentinels.master_address() != old, 30, "the Sentinels promote the replica")
    promoted_after = time.monotonic() - killed_at
    final = _wait(sdk, batch.id, 90)
    finished_after = time.monotonic() - killed_at
    poller.stop.set()
    window, slowest = poller.error_window(killed_at), poller.slowest(killed_at)
    print(
        f"\nfailover: replica promoted after {promoted_after:.1f}s; API errors for {window:.1f}s,"
        f" slowest answer {slowest:.1f}s; batch done {finished_after:.1f}s after the SIGKILL"
    )
    assert final.status == "completed"
    assert_exactly_once(sdk, final, [r["custom_id"] for r in rows])
    assert poller.answers[-1][1] == 200, "the API answers again after the failover"


def _wait(sdk: openai.OpenAI, batch_id: str, timeout: float) -> Batch:
    """Like helpers.wait, but an error answer during the failover is only one more poll."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            batch = sdk.batches.retrieve(batch_id)
        except openai.APIError:  # the failover's errors: the poller counts them
            batch = None
        if batch is not None and batch.status in TERMINAL:
            return batch
        time.sleep(0.2)
    raise TimeoutError(f"{batch_id} did not finish in {timeout}s")
