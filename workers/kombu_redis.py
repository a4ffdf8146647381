"""Two changes to kombu's Redis transport, applied once when the worker's Celery app is created.

**One Redis client per kombu channel**, instead of one per publish and per ack. kombu's Redis
transport builds a new ``redis.Redis`` object for every publish and every ack
(``Channel.conn_or_acquire``). Since redis-py 8 that constructor copies the whole table of
response callbacks, which measured about 1 ms of worker CPU per line task here. A ``redis.Redis``
is thread-safe (each command checks a connection out of the shared pool), so one client per
channel serves every thread.

**Line tasks are not recorded as unacked in Redis.** For every message kombu writes the message to
an ``unacked`` hash and its tag to an index (``MULTI``/``ZADD``/``HSET``/``EXEC``), and deletes both
at the ack: two of the five round trips a line made, to redeliver a task only after the
visibility timeout (2 h). For a line task batchq's own records already do that job, sooner: a
begun line holds a lease that the watchdog takes back when it runs out, a granted task that never
began is sent again by the watchdog's stall check, and the bitmap stores a line once whatever is
redelivered. So a line task's delivery is kept in the worker's memory only (kombu's in-memory
QoS: the prefetch count still holds), and a warm shutdown puts any it took but never ran back in
the line queue from there. Control tasks (submit, finalize, webhook) keep kombu's Redis record.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual as _virtual

from batchq.storage import keys

virtual: Any = _virtual  # kombu is untyped
_redis_append: Any = kombu_redis.QoS.append
_redis_ack: Any = kombu_redis.QoS.ack
_redis_reject: Any = kombu_redis.QoS.reject
_redis_restore_unacked: Any = kombu_redis.QoS.restore_unacked


@contextmanager
def _conn_or_acquire(self: Any, client: Any = None) -> Iterator[Any]:
    if client:
        yield client
        return
    shared = self.__dict__.get("_batchq_client")
    if shared is None:
        shared = self.__dict__["_batchq_client"] = self._create_client()
    yield shared


def _in_memory(message: Any) -> bool:
    """A line task: its delivery is recorded in memory only."""
    info = getattr(message, "delivery_info", None) or {}
    return bool(info.get("routing_key") == keys.LINE_QUEUE)


def _append(self: Any, message: Any, delivery_tag: Any) -> None:
    if _in_memory(message):
        virtual.QoS.append(self, message, delivery_tag)
    else:
        _redis_append(self, message, delivery_tag)


def _ack(self: Any, delivery_tag: Any) -> None:
    if _in_memory(self._delivered.get(delivery_tag)):
        virtual.QoS.ack(self, delivery_tag)
    else:
        _redis_ack(self, delivery_tag)


def _reject(self: Any, delivery_tag: Any, requeue: bool = False) -> None:
    message = self._delivered.get(delivery_tag)
    if not _in_memory(message):
        _redis_reject(self, delivery_tag, requeue)
        return
    if requeue:
        virtual.Channel._restore(self.channel, message)
    virtual.QoS.ack(self, delivery_tag)


def _restore_unacked(self: Any, client: Any = None) -> None:
    """At shutdown: line tasks taken but not acked go back to the line queue from memory; the
    others as kombu restores them (from its Redis record)."""
    self._flush()  # acked tags are gone first
    for tag, message in list(self._delivered.items()):
        if _in_memory(message):
            virtual.Channel._restore(self.channel, message)
            del self._delivered[tag]
    _redis_restore_unacked(self, client)


def install() -> None:
    kombu_redis.Channel.conn_or_acquire = _conn_or_acquire  # type: ignore[method-assign]
    kombu_redis.QoS.append = _append  # type: ignore[method-assign]
    kombu_redis.QoS.ack = _ack  # type: ignore[method-assign]
    kombu_redis.QoS.reject = _reject  # type: ignore[method-assign]
    kombu_redis.QoS.restore_unacked = _restore_unacked  # type: ignore[method-assign]
