"""A rolling upgrade from the previous release (built from git) to this one, in a real run.

The previous release's API and worker run a 1,200-line batch; mid-batch this version's API starts
beside them and takes a batch of its own (the old worker validates and runs it: records and
messages of this version, read by the old code), then this version's worker starts, both workers
run side by side, and the old processes are stopped. Both batches complete, every line exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from batchq import __version__
from batchq.local.embedded import free_port, wait_for
from batchq.local.stack import Stack
from tests import previous_release
from tests.integration.conftest import FAST
from tests.integration.helpers import assert_exactly_once, chat_row, client, submit, wait

pytestmark = pytest.mark.integration
WHY_NOT = previous_release.unavailable()
LINES = 1200


@pytest.fixture
def old_code(tmp_path: Path) -> Path:
    if WHY_NOT:
        pytest.skip(WHY_NOT)
    return previous_release.extract(tmp_path / "previous")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    running = Stack(tmp_path / "stack", env_overrides=dict(FAST), mock_args=["--latency-ms", "100"])
    running.workdir.mkdir(parents=True)
    running.redis_port = free_port()
    running.start_redis()
    running.redis_url = f"redis://127.0.0.1:{running.redis_port}/0"
    running.start_upstream()
    yield running
    running.stop()


@pytest.fixture
def new_upstream(tmp_path: Path) -> Iterator[Stack]:
    """A second mock upstream, for this version's worker: each mock counts one version's requests."""
    mock = Stack(tmp_path / "new-upstream", mock_args=["--latency-ms", "100"])
    mock.workdir.mkdir()
    mock.start_upstream()
    yield mock
    mock.stop()


def spawn_old(stack: Stack, name: str, args: list[str], code: Path, **env: str) -> subprocess.Popen[bytes]:
    """A process of the previous release: its packages first on the path, started outside this tree
    (``python -m`` puts the working directory ahead of PYTHONPATH)."""
    with open(stack.workdir / f"{name}.log", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "batchq", *args], env=stack.env() | env | {"PYTHONPATH": str(code)}, cwd=code,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    stack.processes[name] = process
    return process


def health(url: str) -> dict[str, str] | None:
    try:
        answer = httpx2.get(url + "/health", timeout=1.0)
    except httpx2.HTTPError:
        return None
    return answer.json() if answer.status_code == 200 else None  # type: ignore[no-any-return]


def test_the_previous_release_is_replaced_mid_batch_and_every_line_is_stored_once(
    stack: Stack, new_upstream: Stack, old_code: Path
) -> None:
    old_api = f"http://127.0.0.1:{free_port()}"
    spawn_old(stack, "old-api", ["api", "--port", old_api.rsplit(":", 1)[1]], old_code)
    wait_for(lambda: health(old_api) is not None, 30, "old api")
    assert health(old_api) == {"status": "ok"}, "the old API is the previous release (no version in /health)"
    worker = ["worker", "--concurrency", "8", "-n", "old@%h", "--loglevel", "WARNING"]
    spawn_old(stack, "old-worker", worker, old_code, BATCHQ_WORKER_CONCURRENCY="8")
    wait_for(lambda: b"ready" in (stack.workdir / "old-worker.log").read_bytes(), 60, "old worker")

    old_sdk = client(stack)
    old_sdk.base_url = httpx2.URL(old_api + "/v1/")  # type: ignore[assignment]
    ids = [f"old-{i}" for i in range(LINES)]
    first = submit(old_sdk, [chat_row(i) for i in ids])
    stack.wait_until(lambda: done(old_sdk, first.id) >= 200, 60, "the old worker ran 200 lines")

    stack.start_api()  # this version, beside the old API
    assert health(stack.api_url) == {"status": "ok", "version": __version__}
    sdk = client(stack)
    new_ids = [f"new-{i}" for i in range(300)]
    second = submit(sdk, [chat_row(i) for i in new_ids])
    stack.wait_until(lambda: done(sdk, second.id) >= 20, 60, "the old worker ran lines of the new API's batch")
    progress = done(sdk, first.id)
    assert progress < LINES, "still mid-batch when the new worker starts"

    stack.env_overrides["BATCHQ_UPSTREAM_URL"] = new_upstream.upstream_url  # which worker sent what (a copy of FAST)
    stack.start_worker("new-worker", concurrency=8)
    old_sent = sent(stack)
    stack.wait_until(lambda: done(sdk, first.id) >= progress + 200, 60, "both workers side by side")
    for name in ("old-worker", "old-api"):
        assert stack.processes[name].poll() is None, f"{name} ran until the end of the overlap"
        stack.kill(name, signal.SIGTERM)  # warm shutdown: the old worker finishes its lines in flight

    stopped_at = done(sdk, first.id)
    overlap = (sent(stack) - old_sent, sent(new_upstream))
    assert min(overlap) > 0, "both workers sent lines side by side"
    for batch, custom_ids in ((first, ids), (second, new_ids)):
        ended = wait(sdk, batch.id, timeout=120)
        assert ended.status == "completed"
        assert_exactly_once(sdk, ended, custom_ids)
    print(
        f"\nlines done: {progress} by the old worker alone, {stopped_at} when the old processes stopped, of {LINES};"
        f" while side by side the old worker sent {overlap[0]} requests and the new one {overlap[1]}"
    )
    for name in ("old-worker", "new-worker", "old-api", "api"):
        assert b"Traceback" not in (stack.workdir / f"{name}.log").read_bytes(), name


def sent(upstream: Stack) -> int:
    """Requests the mock upstream has had."""
    return int(httpx2.get(upstream.upstream_url + "/_stats").json()["requests"])


def done(sdk: object, batch_id: str) -> int:
    counts = sdk.batches.retrieve(batch_id).request_counts  # type: ignore[attr-defined]
    return (counts.completed + counts.failed) if counts else 0


def test_the_previous_release_is_named_in_one_place() -> None:
    assert len(previous_release.COMMIT) == 40
    assert os.path.basename(previous_release.__file__) == "previous_release.py"
