"""Line tasks' deliveries live in the worker's memory only (workers/kombu_redis.py); control tasks
keep kombu's Redis record."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from kombu.transport import redis as kombu_redis

from batchq.storage import keys
from workers import kombu_redis as patch


class FakeChannel:
    """What kombu's QoS touches of a channel: where a restored message goes, and Redis."""

    def __init__(self) -> None:
        self.put: list[tuple[str, dict[str, Any]]] = []
        self.do_restore = False  # kombu restores at garbage collection too: not in this test

    def _lookup(self, exchange: str, routing_key: str) -> list[str]:
        return [routing_key]

    def _put(self, queue: str, message: dict[str, Any]) -> None:
        self.put.append((queue, message))

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        yield FakeRedis()


class RedisTouched(Exception):
    pass


class FakeRedis:
    def pipeline(self) -> Any:
        raise RedisTouched


class FakeMessage:
    def __init__(self, queue: str, tag: str) -> None:
        self.delivery_info = {"exchange": "", "routing_key": queue}
        self.delivery_tag = tag

    def serializable(self) -> dict[str, Any]:
        return {"tag": self.delivery_tag}


def qos() -> Any:
    patch.install()
    return kombu_redis.QoS(FakeChannel(), prefetch_count=2)  # type: ignore[no-untyped-call]


def test_a_line_task_is_appended_and_acked_in_memory() -> None:
    q = qos()
    q.append(FakeMessage(keys.LINE_QUEUE, "a"), "a")
    q.append(FakeMessage(keys.LINE_QUEUE, "b"), "b")
    assert not q.can_consume()  # the prefetch count still holds
    q.ack("a")
    assert q.can_consume()


def test_a_warm_shutdown_puts_unacked_line_tasks_back_from_memory() -> None:
    q = qos()
    for tag in ("a", "b"):
        q.append(FakeMessage(keys.LINE_QUEUE, tag), tag)
    q.ack("a")
    q.restore_unacked()
    assert [(queue, m["tag"]) for queue, m in q.channel.put] == [(keys.LINE_QUEUE, "b")]
    assert not q._delivered


def test_a_control_task_keeps_kombus_redis_record() -> None:
    q = qos()
    with pytest.raises(RedisTouched):
        q.append(FakeMessage(keys.CONTROL_QUEUE, "c"), "c")
