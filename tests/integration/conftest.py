"""Real processes for the integration tests: a private redis-server, the mock upstream, the API
and Celery workers, started once per session (and per module where a test needs other settings)."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from batchq.local.embedded import free_port, start_redis
from batchq.local.stack import Stack

FAST = {
    "BATCHQ_UPSTREAM_BACKOFF_BASE_S": "0.01",
    "BATCHQ_UPSTREAM_BACKOFF_MAX_S": "0.2",
    "BATCHQ_UPSTREAM_MAX_ATTEMPTS": "4",
    "BATCHQ_UPSTREAM_TIMEOUT_S": "5",
    "BATCHQ_WATCHDOG_INTERVAL_S": "1",
    "BATCHQ_MIN_COMPLETION_WINDOW": "1s",
    "BATCHQ_CANCEL_GRACE_S": "10",
    "BATCHQ_API_RPM_PER_KEY": "0",  # the tests poll fast; the limit has its own test
    "BATCHQ_QUEUE_DEPTH": "8",  # most test batches are larger: their lines wait in the scheduler
}


def start_stack(workdir: Path, env: dict[str, str] | None = None, upstream_port: int = 0, **kw: object) -> Stack:
    stack = Stack(workdir, env_overrides=FAST | (env or {}), upstream_port=upstream_port)
    try:
        return stack.start(**kw)  # type: ignore[arg-type]
    except BaseException:
        stack.stop()
        _dump_logs(workdir)
        raise


def _dump_logs(workdir: Path) -> None:
    for log in sorted(workdir.glob("*.log")):
        print(f"==== {log.name}\n{log.read_text(errors='replace')[-3000:]}")


class Receiver:
    """A webhook receiver on loopback: records every delivery; answers 500 to each event's first try."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes, int]] = []
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                status = receiver.record(dict(self.headers.items()), body)
                self.send_response(status)
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        return Handler

    def record(self, headers: dict[str, str], body: bytes) -> int:
        with self._lock:
            first = headers.get("webhook-id", "") not in self._seen
            self._seen.add(headers.get("webhook-id", ""))
            status = 500 if first else 200
            self.deliveries.append(({k.lower(): v for k, v in headers.items()}, body, status))
            return status


WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"test-secret-0123456789").decode()


@pytest.fixture(scope="session")
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.server.shutdown()
    running.server.server_close()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("stack")
    hooks = {"BATCHQ_WEBHOOK_URL": receiver.url, "BATCHQ_WEBHOOK_SECRET": WEBHOOK_SECRET}
    hooks["BATCHQ_WORKER_METRICS_PORT"] = str(free_port())
    running = start_stack(workdir, hooks, workers=1, concurrency=16)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of the test module's own, on a free port (the module may flush it)."""
    port = free_port()
    server = start_redis(port, Path(tmp_path_factory.mktemp("redis")))
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(10)
