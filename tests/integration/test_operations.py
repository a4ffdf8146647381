"""What operators see: Prometheus metrics from the API and the workers, and JSON logs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import cast

import httpx2
import orjson
import pytest
from fastapi.testclient import TestClient

from batchq import __version__
from batchq.api.app import create_app
from batchq.config import Settings
from batchq.local.embedded import free_port
from batchq.local.stack import Stack
from batchq.runtime import TaskQueue, build_runtime
from tests.integration.helpers import chat_row, client, submit, wait

pytestmark = pytest.mark.integration


def sample(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name}{labels} not in metrics"
    return float(match.group(1))


def test_metrics_count_a_finished_batch(stack: Stack) -> None:
    before = httpx2.get(stack.api_url + "/metrics").text
    sdk = client(stack, user="metrics")
    rows = [chat_row(f"m{i}") for i in range(4)] + [chat_row("bad", status=400)]
    batch = wait(sdk, submit(sdk, rows).id)
    assert batch.status == "completed"
    after = httpx2.get(stack.api_url + "/metrics")
    assert after.status_code == 200 and after.headers["content-type"].startswith("text/plain")
    text = after.text
    assert sample(text, "batchq_lines_completed_total") - sample(before, "batchq_lines_completed_total") == 4
    assert sample(text, "batchq_lines_failed_total") - sample(before, "batchq_lines_failed_total") == 1
    finished = "batchq_batches_finished_total"
    assert sample(text, finished, '{status="completed"}') >= sample(before, finished, '{status="completed"}') + 1
    assert sample(text, "batchq_up") == 1
    assert "batchq_queue_depth" in text


def test_worker_exports_upstream_latency_and_line_counts(stack: Stack) -> None:
    port = stack.env_overrides["BATCHQ_WORKER_METRICS_PORT"]
    sdk = client(stack, user="worker-metrics")
    wait(sdk, submit(sdk, [chat_row("w")]).id)
    text = httpx2.get(f"http://127.0.0.1:{port}/metrics").text
    count = sample(text, "batchq_upstream_request_seconds_count", '{outcome="ok",route="default"}')
    assert count >= 1
    assert sample(text, "batchq_lines_total", '{outcome="completed"}') >= 1


def test_worker_logs_are_json_lines_with_ids_and_no_content(stack: Stack) -> None:
    sdk = client(stack, user="logs")
    secret = "a prompt nobody may log"
    batch = wait(sdk, submit(sdk, [chat_row("logged-failure", secret, status=400)]).id)
    log = (stack.workdir / "worker0.log").read_text()
    events = [orjson.loads(line) for line in log.splitlines() if line.startswith("{")]
    failed = [e for e in events if e.get("message") == "line failed" and e.get("batch_id") == batch.id]
    assert failed and failed[0]["custom_id"] == "logged-failure" and failed[0]["status_code"] == 400
    assert {"ts", "level", "logger"} <= set(failed[0])
    assert secret not in log


def test_health_checks_redis_and_livez_checks_only_the_process(stack: Stack) -> None:
    assert httpx2.get(stack.api_url + "/health").json() == {"status": "ok", "version": __version__}
    assert httpx2.get(stack.api_url + "/livez").json() == {"status": "ok"}
    cut_off = Settings(_env_file=None, redis_url=f"redis://127.0.0.1:{free_port()}/0", api_keys=["k"])  # type: ignore[call-arg]
    with TestClient(create_app(build_runtime(cut_off, pool_size=2, api=True), cast(TaskQueue, None))) as api:
        unready = api.get("/health")
        assert unready.status_code == 503 and unready.json()["error"]["message"].startswith("Redis is unreachable")
        assert api.get("/livez").status_code == 200  # a Redis outage must not restart the API


def test_top_shows_every_tenants_unfinished_batches(stack: Stack) -> None:
    sdk = client(stack, user="top-watched")
    batch = submit(sdk, [chat_row(f"slow{i}", latency_ms=1500) for i in range(80)])  # 5 rounds of 16 threads
    stack.wait_until(lambda: sdk.batches.retrieve(batch.id).status == "in_progress", 20, "in progress")
    env = os.environ | {"BATCHQ_REDIS_URL": stack.redis_url or ""}
    run = [sys.executable, "-m", "batchq", "top"]
    shown = subprocess.run([*run, "--json"], env=env, capture_output=True, text=True, timeout=60, check=True)
    overview = orjson.loads(shown.stdout)
    (row,) = [b for b in overview["batches"] if b["id"] == batch.id]
    assert row["owner"]["user"] == "top-watched" and row["status"] == "in_progress" and row["total"] == 80
    assert row["waiting"] > 0 and row["leased"] > 0  # 16 threads and a queue of 8: the rest wait their turn
    assert isinstance(overview["queue_depth"], int) and set(overview["in_flight"]) == {"default"}
    (tenant,) = [t for t in overview["tenants"] if t["account"] == row["owner"]["account"]]
    assert tenant["weight"] == 1 and tenant["in_flight"] >= row["leased"] and tenant["waiting"] >= row["waiting"]
    assert tenant["lines_per_s"] is not None  # measured between the two snapshots
    table = subprocess.run([*run, "--once"], env=env | {"COLUMNS": "200"}, capture_output=True, text=True, timeout=60)
    assert table.returncode == 0 and batch.id in table.stdout and "top-watched" in table.stdout
    wait(sdk, batch.id)
    after = orjson.loads(subprocess.run([*run, "--json"], env=env, capture_output=True, timeout=60).stdout)
    assert batch.id not in [b["id"] for b in after["batches"]]
