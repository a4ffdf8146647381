"""Real processes for the integration tests: a private redis-server, the mock upstream, the API
and Celery workers, started once per session (and per module where a test needs other settings)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from batchq.stack import Stack

FAST = {
    "BATCHQ_UPSTREAM_BACKOFF_BASE_S": "0.01",
    "BATCHQ_UPSTREAM_BACKOFF_MAX_S": "0.2",
    "BATCHQ_UPSTREAM_MAX_ATTEMPTS": "4",
    "BATCHQ_UPSTREAM_TIMEOUT_S": "5",
    "BATCHQ_WATCHDOG_INTERVAL_S": "1",
    "BATCHQ_MIN_COMPLETION_WINDOW": "1s",
    "BATCHQ_CANCEL_GRACE_S": "10",
}


def start_stack(workdir: Path, env: dict[str, str] | None = None, **kw: object) -> Stack:
    stack = Stack(workdir, env_overrides=FAST | (env or {}))
    try:
        return stack.start(**kw)  # type: ignore[arg-type]
    except BaseException:
        stack.stop()
        _dump_logs(workdir)
        raise


def _dump_logs(workdir: Path) -> None:
    for log in sorted(workdir.glob("*.log")):
        print(f"==== {log.name}\n{log.read_text(errors='replace')[-3000:]}")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("stack")
    running = start_stack(workdir, workers=1, concurrency=16)
    yield running
    running.stop()
