"""Publishing a batch's line tasks in bulk.

Celery spends about 1.3 ms of CPU to publish one task (signature, message, serialization,
routing, one round trip); for 50,000 lines that is over a minute of a worker's CPU before the
first request goes out. ``publish_tasks`` writes the messages itself, in the Celery protocol v2
JSON form that kombu's Redis transport stores (the same fields Celery writes), through pipelined
``LPUSH`` calls of a thousand messages each: about 0.03 ms per line. Workers consume them as
ordinary Celery tasks.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import orjson
import redis

CHUNK = 1000
EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def publish_tasks(
    client: redis.Redis, task: str, arglists: Sequence[Sequence[Any]], queue: str = "celery", to: str | None = None
) -> None:
    """Write one message per arglist for ``queue``, in order, into the list ``to`` (default: the queue).

    Another list holds them in the same order (the next one at the right end), so ``RPOPLPUSH``
    from it into the queue hands them to the workers one by one.
    """
    target = to or queue
    batch: list[bytes] = []
    for message in _messages(task, arglists, queue):
        batch.append(message)
        if len(batch) == CHUNK:
            client.lpush(target, *batch)
            batch = []
    if batch:
        client.lpush(target, *batch)


def _messages(task: str, arglists: Sequence[Sequence[Any]], queue: str) -> Iterator[bytes]:
    for args in arglists:
        task_id = str(uuid.uuid4())
        yield orjson.dumps({
            "body": base64.b64encode(orjson.dumps([list(args), {}, EMBED])).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": _headers(task, task_id, args),
            "properties": _properties(task_id, queue),
        })  # fmt: skip


def _headers(task: str, task_id: str, args: Sequence[Any]) -> dict[str, Any]:
    return {
        "lang": "py", "task": task, "id": task_id, "shadow": None, "eta": None, "expires": None,
        "group": None, "group_index": None, "retries": 0, "timelimit": [None, None],
        "root_id": task_id, "parent_id": None, "argsrepr": repr(tuple(args)), "kwargsrepr": "{}",
        "origin": "batchq", "ignore_result": True, "replaced_task_nesting": 0,
        "stamped_headers": None, "stamps": {},
    }  # fmt: skip


def _properties(task_id: str, queue: str) -> dict[str, Any]:
    return {
        "correlation_id": task_id, "reply_to": "", "delivery_mode": 2,
        "delivery_info": {"exchange": "", "routing_key": queue}, "priority": 0,
        "body_encoding": "base64", "delivery_tag": str(uuid.uuid4()),
    }  # fmt: skip
