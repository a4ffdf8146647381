"""A deployment's identity, with real processes: the API and a worker pointed at an empty Redis
beside an existing data directory delete nothing, and say why (one ERROR line each, ``/health``).

The orphan grace is 1 s and the watchdog sweeps every second: without the check, the sweep would
remove every file within two seconds (as it does once the operator adopts the data into the new
Redis, at the end).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import orjson
import pytest

from batchq.config import Settings
from batchq.local.embedded import free_port
from batchq.local.serve import embedded_redis
from batchq.local.stack import Stack
from batchq.storage import keys
from batchq.storage.redis_client import connect
from tests.integration.conftest import FAST, start_stack
from tests.integration.helpers import chat_row, client, jsonl

pytestmark = pytest.mark.integration
GRACE = {"BATCHQ_ORPHAN_GRACE_S": "1"}


def test_an_empty_redis_facing_existing_data_deletes_nothing_and_says_why(tmp_path: Path) -> None:
    first = start_stack(tmp_path, GRACE, workers=1, concurrency=2)
    try:
        with client(first) as sdk:
            for n in range(3):
                sdk.files.create(file=(f"in{n}.jsonl", jsonl([chat_row(f"r{n}")])), purpose="batch")
    finally:
        first.stop()
    files = tmp_path / "data" / "files"
    kept = sorted(p.name for p in files.iterdir())
    assert len(kept) == 3 and (tmp_path / "data" / "deployment").is_file()

    for log in tmp_path.glob("*.log"):
        log.rename(log.with_suffix(".first"))
    second = Stack(tmp_path, env_overrides=FAST | GRACE, redis_port=free_port())
    try:
        second.start_redis()  # a new, empty Redis; the same data directory
        second.redis_url = f"redis://127.0.0.1:{second.redis_port}/0"
        second.start_upstream()
        second.start_api(ready="/livez")
        second.start_worker("worker0", concurrency=2)
        health = httpx2.get(second.api_url + "/health")
        assert health.status_code == 503
        error = health.json()["error"]
        assert error["code"] == "deployment_mismatch" and "has no deployment id" in error["message"]
        time.sleep(8)  # eight sweeps, each past the grace of every file
        assert sorted(p.name for p in files.iterdir()) == kept, "nothing deleted"
        for name in ("api", "worker0"):
            errors = [e for e in _logged(tmp_path / f"{name}.log") if e.get("level") == "ERROR"]
            assert len(errors) == 1, f"{name}: one ERROR line, not one per sweep: {errors}"
            assert "deployment mismatch" in errors[0]["message"] and "BATCHQ_REDIS_URL" in errors[0]["message"]

        adopt = [sys.executable, "-m", "batchq", "deployment", "--adopt"]
        ran = subprocess.run(adopt, env=second.env(), capture_output=True, text=True, timeout=60)
        assert ran.returncode == 0, ran.stderr
        assert httpx2.get(second.api_url + "/health").status_code == 200
        second.wait_until(lambda: not any(files.iterdir()), 20, "the sweep removes the orphans once adopted")
    finally:
        second.stop()


def _logged(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.startswith(b"{")]


def test_serve_facing_an_empty_redis_exits_saying_why(tmp_path: Path, redis_url: str) -> None:
    """``batchq serve`` with BATCHQ_REDIS_URL at an empty Redis and a data directory of a deployment:
    it stops at once with the reason instead of waiting for a ready API."""
    data = tmp_path / "data"
    (data / "files").mkdir(parents=True)
    (data / "files" / ("file-" + "5" * 32)).write_bytes(b"{}\n")
    (data / "deployment").write_text("d" * 32 + "\n")
    env = os.environ | FAST | {"BATCHQ_REDIS_URL": redis_url, "BATCHQ_DATA_DIR": str(data), "BATCHQ_API_KEYS": "k"}
    args = [sys.executable, "-m", "batchq", "serve", "--port", str(free_port()), "--concurrency", "2"]
    args += ["--stop-timeout", "5"]
    ran = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 1
    said = [line for line in ran.stderr.splitlines() if line.startswith("error: batchq serve:")]
    assert len(said) == 1 and "deployment mismatch" in said[0] and "d" * 32 in said[0], ran.stderr[-3000:]
    assert (data / "files" / ("file-" + "5" * 32)).exists()


def test_adopt_starts_the_embedded_redis_that_serve_stopped(tmp_path: Path) -> None:
    """``batchq serve`` refused (and stopped its Redis): the fix it names works with nothing running."""
    data = tmp_path / "data"
    (data / "files").mkdir(parents=True)
    (data / "files" / ("file-" + "5" * 32)).write_bytes(b"{}\n")
    (data / "deployment").write_text("d" * 32 + "\n")
    port = free_port()
    env = os.environ | {"BATCHQ_REDIS_URL": f"redis://127.0.0.1:{port}/0", "BATCHQ_DATA_DIR": str(data)}
    adopt = [sys.executable, "-m", "batchq", "deployment", "--adopt"]
    ran = subprocess.run(adopt, env=env, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert f"deployment id in Redis: {'d' * 32}" in ran.stdout
    settings = Settings(_env_file=None, redis_url=env["BATCHQ_REDIS_URL"], data_dir=data)  # type: ignore[call-arg]
    with embedded_redis(settings) as url:  # the same Redis again, from its append-only file
        assert connect(url, max_connections=1).get(keys.DEPLOYMENT) == b"d" * 32
