"""Line task messages, written by hand in the Celery protocol v2 form that kombu's Redis transport stores.

Celery spends about 1.3 ms of CPU to publish one task (signature, message, serialization,
routing, one round trip); for 50,000 lines that is over a minute of a worker's CPU before the
first request goes out. ``line_messages`` builds the same messages Celery would (the same fields),
about 0.03 ms per line; the scheduler (``batchq.storage.scheduler``) keeps them in each batch's
waiting list and moves them into the line queue one grant at a time. Workers consume them as
ordinary Celery tasks. ``line_of`` reads one back (the watchdog's view of the queue). Like every
task message, a line's carries its schema (``batchq_schema``, a header older releases ignore).
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import orjson

from batchq.storage import schema

EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def line_messages(task: str, arglists: Sequence[Sequence[Any]], queue: str) -> Iterator[bytes]:
    """One message per arglist, in order (streamed: a 50,000-line batch is never in memory twice)."""
    return (_message(task, args, queue) for args in arglists)


def line_of(message: bytes) -> tuple[str, int] | None:
    """(batch id, line index) of a line task message; None for anything else."""
    try:
        parsed = orjson.loads(message)
        args = orjson.loads(base64.b64decode(parsed["body"]))[0]
        return str(args[0]), int(args[1])
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def _message(task: str, args: Sequence[Any], queue: str) -> bytes:
    task_id = str(uuid.uuid4())
    return orjson.dumps({
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
        "stamped_headers": None, "stamps": {}, schema.HEADER: schema.SCHEMA,
    }  # fmt: skip


def _properties(task_id: str, queue: str) -> dict[str, Any]:
    return {
        "correlation_id": task_id, "reply_to": "", "delivery_mode": 2,
        "delivery_info": {"exchange": "", "routing_key": queue}, "priority": 0,
        "body_encoding": "base64", "delivery_tag": str(uuid.uuid4()),
    }  # fmt: skip
