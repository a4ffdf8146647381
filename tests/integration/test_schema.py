"""Schema versions on a real Redis and real processes: claiming a deployment, moving the old queue
under concurrency, and what a process does with data of a newer schema than it knows."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx2
import orjson
import pytest
import redis

from batchq.errors import NewerSchema
from batchq.storage import keys, schema
from batchq.storage.apikeys import ApiKeyStore
from batchq.storage.batches import BatchStore
from batchq.storage.files import FileStore
from tests.integration.conftest import start_stack
from tests.integration.helpers import chat_row, client, submit, wait
from workers.publish import line_messages, line_of

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def connected(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as conn:
        yield conn


@pytest.fixture
def db(connected: redis.Redis) -> redis.Redis:
    connected.flushdb()  # a private server: this module's own
    return connected


def test_a_process_claims_the_deployment_for_its_schema_and_refuses_a_newer_one(db: redis.Redis) -> None:
    assert schema.deployment(db).schema == 1, "nothing claimed yet: what 0.1.0 left"
    assert schema.claim(db).schema == schema.SCHEMA
    assert schema.deployment(db).schema == schema.SCHEMA
    db.hset(keys.SCHEMA, mapping={"schema": schema.SCHEMA + 1, "release": "9.0.0"})
    with pytest.raises(NewerSchema, match=r"found a deployment of schema \d+ \(written by batchq 9\.0\.0\)"):
        schema.claim(db)
    assert db.hget(keys.SCHEMA, "schema") == str(schema.SCHEMA + 1).encode(), "a newer claim is left as it is"


def legacy_messages(count: int) -> list[bytes]:
    """Line tasks and control tasks as a version before the two-queue scheduler left them in ``celery``."""
    lines = list(line_messages("batchq.line", [("batch_old", i, 0, 1) for i in range(count)], "celery"))
    control = list(line_messages("batchq.finalize", [("batch_old",)], "celery"))
    return [m.replace(b'"batchq_schema":2', b"").replace(b",}", b"}") for m in lines + control]


def test_the_old_queue_is_moved_once_by_processes_moving_it_at_once(db: redis.Redis) -> None:
    messages = legacy_messages(3000)
    db.lpush("celery", *messages[:2000])
    db.lpush("celery\x06\x163", *messages[2000:])  # kombu's list for a priority step
    moved: list[int] = []
    movers = [threading.Thread(target=lambda: moved.append(schema.move_legacy_queue(db))) for _ in range(6)]
    for mover in movers:
        mover.start()
    for mover in movers:
        mover.join()
    assert sum(moved) == len(messages) and db.llen("celery") == 0 == db.llen("celery\x06\x163")
    lines = db.lrange(keys.LINE_QUEUE, 0, -1)
    control = db.lrange(keys.CONTROL_QUEUE, 0, -1)
    assert len(control) == 1 and b'"task":"batchq.finalize"' in control[0]
    assert b'"routing_key":"batchq.control"' in control[0]
    found = Counter(line_of(m) for m in lines)
    assert found == Counter(("batch_old", i) for i in range(3000)), "every line task once"
    assert all(b'"routing_key":"batchq.lines"' in m for m in lines), "restored to its new queue if its worker dies"
    first = [line_of(m) for m in reversed(lines) if (line_of(m) or ("", 0))[1] < 2000]
    assert first == [("batch_old", i) for i in range(2000)], "in the order they would have run"
    assert schema.move_legacy_queue(db) == 0


def test_records_of_a_newer_schema_are_not_read(db: redis.Redis, tmp_path: Path) -> None:
    batch = keys.batch("batch_newer")
    db.hset(batch, mapping={"id": "batch_newer", "status": "in_progress", "owner": "o", "schema": 99})
    db.hset(batch, mapping={"input_file_id": "file-x", "endpoint": "/v1/chat/completions", "total": 1})
    store = BatchStore(db)
    for read in (store.get, store.bookkeeping, store.line_source):
        with pytest.raises(NewerSchema, match="batch batch_newer of schema 99"):
            read("batch_newer")
    db.hset(keys.file("file-newer"), mapping={"id": "file-newer", "owner": "o", "schema": 99})
    with pytest.raises(NewerSchema, match="file file-newer of schema 99"):
        FileStore(db, tmp_path)._load("file-newer")
    record = {"id": "key_1", "name": "n", "created_at": 1, "prefix": "sk-", "schema": 99}
    db.set(keys.api_key("d"), orjson.dumps(record))
    with pytest.raises(NewerSchema):
        ApiKeyStore(db).lookup_digest("d")


def test_records_are_written_with_this_schema(db: redis.Redis) -> None:
    record, _ = ApiKeyStore(db).create("ops")
    assert orjson.loads(db.hget(keys.API_KEY_INDEX, record.id) or b"{}")["schema"] == schema.SCHEMA
    assert ApiKeyStore(db).list() == [record]


def run_cli(role: str, redis_url: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"BATCHQ_REDIS_URL": redis_url, "BATCHQ_DATA_DIR": str(tmp_path)}
    return subprocess.run([sys.executable, "-m", "batchq", role], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("role", ["api", "worker", "scheduler"])
def test_a_server_process_under_a_newer_deployment_exits_1_with_one_line(
    db: redis.Redis, redis_url: str, tmp_path: Path, role: str
) -> None:
    db.hset(keys.SCHEMA, mapping={"schema": schema.SCHEMA + 1, "release": "9.0.0"})
    ran = run_cli(role, redis_url, tmp_path)
    assert ran.returncode == 1
    (line,) = ran.stderr.strip().splitlines()
    assert line.startswith(f"error: batchq {role}: batchq ") and "written by batchq 9.0.0" in line
    assert "upgrade this process" in line


def stack_logs(workdir: Path, name: str) -> str:
    return (workdir / f"{name}.log").read_text(errors="replace")


def test_the_api_answers_503_for_a_newer_record_and_stops(tmp_path: Path) -> None:
    stack = start_stack(tmp_path, workers=0)
    try:
        sdk = client(stack)
        batch = submit(sdk, [chat_row("a")])
        newer = redis.Redis.from_url(stack.redis_url or "")
        newer.hset(keys.batch(batch.id), "schema", schema.SCHEMA + 1)
        auth = {"Authorization": f"Bearer {stack.api_key}"}
        answer = httpx2.get(f"{stack.api_url}/v1/batches/{batch.id}", headers=auth)
        assert answer.status_code == 503 and answer.json()["error"]["code"] == "newer_schema"
        assert stack.processes["api"].wait(30) is not None, "the API stopped"
        said = [line for line in stack_logs(tmp_path, "api").splitlines() if "upgrade this process" in line]
        assert len(said) == 1 and f"batch {batch.id} of schema {schema.SCHEMA + 1}" in said[0]
        assert newer.hget(keys.batch(batch.id), "status") == b"validating", "the record was not changed"
    finally:
        stack.stop()


def test_a_worker_hands_back_a_newer_task_message_and_stops(tmp_path: Path) -> None:
    stack = start_stack(tmp_path, workers=1, concurrency=2)
    try:
        sdk = client(stack)
        assert wait(sdk, submit(sdk, [chat_row("before")]).id).status == "completed"
        (message,) = line_messages("batchq.line", [("batch_future", 0, 0, 1)], keys.LINE_QUEUE)
        newer = message.replace(b'"batchq_schema":2', f'"batchq_schema":{schema.SCHEMA + 1}'.encode())
        db = redis.Redis.from_url(stack.redis_url or "")
        db.lpush(keys.LINE_QUEUE, newer)
        assert stack.processes["worker0"].wait(60) is not None, "the worker stopped"
        said = [line for line in stack_logs(tmp_path, "worker0").splitlines() if "upgrade this process" in line]
        assert len(said) == 1 and "a batchq.line task message of schema" in said[0]
        (left,) = db.lrange(keys.LINE_QUEUE, 0, -1)  # left in the queue for a newer worker (as kombu restores it)
        headers = orjson.loads(left)["headers"]
        assert headers["id"] == orjson.loads(newer)["headers"]["id"] and headers[schema.HEADER] == schema.SCHEMA + 1
        assert line_of(left) == ("batch_future", 0)
    finally:
        stack.stop()


def test_tasks_left_in_the_old_celery_queue_run_when_the_first_new_worker_starts(tmp_path: Path) -> None:
    stack = start_stack(tmp_path, workers=0)
    try:
        sdk = client(stack)
        batch = submit(sdk, [chat_row(f"r{i}") for i in range(20)])
        db = redis.Redis.from_url(stack.redis_url or "")
        (submit_task,) = db.lrange(keys.CONTROL_QUEUE, 0, -1)
        assert orjson.loads(submit_task)["headers"][schema.HEADER] == schema.SCHEMA, "Celery's messages carry it too"
        # as a version before the scheduler sent it:
        db.delete(keys.CONTROL_QUEUE)
        db.lpush("celery", submit_task.replace(b'"routing_key": "batchq.control"', b'"routing_key": "celery"'))
        stack.start_worker("worker0", concurrency=4)
        assert wait(sdk, batch.id).status == "completed"
        assert db.llen("celery") == 0
        assert "moved tasks left in the old celery queue" in stack_logs(tmp_path, "worker0")
    finally:
        stack.stop()
