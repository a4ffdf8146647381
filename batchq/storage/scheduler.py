"""The queue order: which waiting line runs next. Fair across tenants, then across a tenant's batches.

A batch's line tasks wait, already serialized, in the batch's own list (``batch:{id}:pending``).
The Celery line queue holds only a short run of **granted** tasks: ``BATCHQ_QUEUE_DEPTH``, about
what the workers take next. Every task a worker takes from the queue grants the next line in the
same Redis call that begins it (``BEGIN_LINE`` runs ``sched_fill``), so the queue stays at its
depth while there is work, and a newcomer's first line waits behind about that depth.

Which line is granted (``scheduler.lua``, the only place the order is decided):

1. A batch whose **urgent time** has passed (the last ``BATCHQ_URGENT_SHARE`` of its completion
   window) goes first, earliest first, so it does not expire with lines never started. It takes
   at most three of every four grants: the fourth follows the fair order, so a batch at risk
   cannot hold every worker. A batch past its ``expires_at`` is granted nothing.
2. Otherwise the **tenant** (the API key's account) with the least pass, where each granted line
   adds ``1 / weight`` to its tenant's pass: tenants with work share the workers in proportion to
   their weights (``batchq keys create --weight N``; 1 by default).
3. Within the tenant, the **batch** with the least pass (each line adds 1): a tenant's batches
   share its part round-robin, whoever sent them (``X-On-Behalf-Of`` identities of one key
   share the key's part batch by batch).

Newcomers join at the current virtual time (stride scheduling / start-time fair queuing), so a
small batch is served at once instead of behind the backlog, and a tenant gains no credit for
the time it had nothing to run. The tasks themselves are opaque bytes here: their format is the
transport's (``workers.publish``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import redis

from batchq.storage import keys
from batchq.storage.lua import Call, Script

SCHEDULER_LUA = Path(__file__).with_name("scheduler.lua").read_text()

CHUNK = 1000  # messages per LPUSH while publishing a batch
GRANT_CHUNK = 8  # the most lines one pick grants; a line's own fill waits until the queue lacks as many


class Scheduler:
    def __init__(self, client: redis.Redis, depth: int) -> None:
        self.r = client
        self.depth = depth
        body = "\nlocal k, a = part('sched')\n"
        self._fill = Script(client, SCHEDULER_LUA + body + "return sched_fill(k, a)")
        self._enroll = Script(
            client, SCHEDULER_LUA + body + "sched_enroll(k, a, a.batch, a.tenant, a.urgent_at)\nreturn sched_fill(k, a)"
        )

    # --- the call every begun line folds into its own script ----------------------------------

    def fill_call(self, now: float, force: bool = False) -> Call:
        """The ``sched`` part that tops the line queue up, to fold into a line's own script.
        Unless ``force``, it looks at the batches parked for a down route at most every 0.1 s, and
        grants only once the queue lacks ``GRANT_CHUNK`` lines (then up to that many per pick)."""
        args = {"now": now, "depth": self.depth, "force": int(force), "chunk": GRANT_CHUNK, **_PREFIXES}
        return Call(_KEYS, args)

    def fill(self, now: float) -> int:
        """Top the line queue up to its depth (parked batches looked at now); returns how many
        lines were granted."""
        return int(self._fill.run({"sched": self.fill_call(now, force=True)}))

    # --- batches ---------------------------------------------------------------------------

    def add(self, batch_id: str, tenant: str, messages: Iterable[bytes], urgent_at: float, now: float) -> None:
        """A batch's line tasks, in line order, join the waiting work; the queue is topped up.

        The batch is enrolled after each chunk, so its first lines run while the rest is still
        being written (a batch whose list ran dry in between is enrolled again).
        """
        pending = keys.batch_pending(batch_id)
        stream = iter(messages)
        while chunk := list(itertools.islice(stream, CHUNK)):
            pipe = self.r.pipeline(transaction=False)
            pipe.lpush(pending, *chunk)  # the next one at the right end
            pipe.expire(pending, keys.RESULT_TTL_S)
            pipe.execute()
            self.enroll(batch_id, tenant, urgent_at, now)

    def put_back(self, batch_id: str, tenant: str, messages: Sequence[bytes], urgent_at: float, now: float) -> None:
        """Tasks to run again (lost with a worker) go first in their batch's turn."""
        if messages:
            pipe = self.r.pipeline(transaction=False)
            pipe.rpush(keys.batch_pending(batch_id), *messages)
            pipe.expire(keys.batch_pending(batch_id), keys.RESULT_TTL_S)
            pipe.execute()
            self.enroll(batch_id, tenant, urgent_at, now)

    def enroll(self, batch_id: str, tenant: str, urgent_at: float, now: float) -> int:
        """Make a batch with waiting lines eligible (idempotent) and top the queue up."""
        args = {"batch": batch_id, "tenant": tenant, "urgent_at": urgent_at}
        call = self.fill_call(now)
        return int(self._enroll.run({"sched": Call(call.keys, call.args | args)}))

    def waiting(self, batch_id: str) -> int:
        """Line tasks of the batch not granted yet."""
        return int(self.r.llen(keys.batch_pending(batch_id)))

    def waiting_messages(self, batch_id: str) -> Iterator[bytes]:
        """The batch's tasks not granted yet, read ``CHUNK`` at a time."""
        pending = keys.batch_pending(batch_id)
        for start in itertools.count(0, CHUNK):
            chunk = self.r.lrange(pending, start, start + CHUNK - 1)
            yield from chunk
            if len(chunk) < CHUNK:
                return

    def queued_messages(self) -> list[bytes]:
        """The granted tasks in the line queue (a short list: about ``depth``)."""
        pipe = self.r.pipeline(transaction=False)
        for name in keys.queue_lists(keys.LINE_QUEUE):
            pipe.lrange(name, 0, -1)
        return [m for chunk in pipe.execute() for m in chunk]


_KEYS = {
    "queue": keys.LINE_QUEUE,
    "tenants": keys.SCHED_TENANTS,
    "urgent": keys.SCHED_URGENT,
    "state": keys.SCHED_STATE,
    "weights": keys.SCHED_WEIGHTS,
    "granted": keys.SCHED_GRANTED,
    "parked": keys.SCHED_PARKED,
}
_PREFIXES = {
    "batch_prefix": keys.BATCH_PREFIX, "tenant_prefix": keys.SCHED_TENANT_PREFIX, "limit_prefix": keys.LIMIT_PREFIX
}  # fmt: skip
