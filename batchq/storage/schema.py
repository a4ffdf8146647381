"""Schema versions: what shape of records and task messages a process writes and can read.

Every record batchq keeps in Redis (batch, file, upload and managed-key records) carries its
schema in a ``schema`` field, and every task message in a ``batchq_schema`` header. A reader takes
a missing one as 1: what batchq 0.1.0 wrote, the same shapes without the field. ``SCHEMA`` goes up
only when a change would be misread by the release before it; a field that older code ignores is
no reason. Other keys (counters, the scheduler's sets, leases, idempotency records) keep their
format, or change their key name with it.

A reader that meets a newer schema raises ``NewerSchema`` and changes nothing (``check``); the
process then stops (``batchq.upgrade``). At start every server process raises the deployment's
schema to its own (``claim``) and refuses to run when it is already newer, and moves what earlier
releases left where this one no longer looks (``move_legacy_queue``): each message in one atomic
step, so any number of processes may do it at once and none is moved twice or lost.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from batchq.errors import NewerSchema
from batchq.storage import keys
from batchq.storage.lua import Call, Script
from batchq.version import version

SCHEMA = 2  # 1: batchq 0.1.0 (no schema field or header); 2: batchq 0.2.0
FIELD = "schema"  # of a record (a hash field, or a key of a JSON record)
HEADER = "batchq_schema"  # of a task message
LEGACY_QUEUE = "celery"  # Celery's default queue, where versions before the two-queue scheduler sent every task
MOVE_CHUNK = 500  # messages moved per script call (each call is atomic and short)

# deploy  k: marker (hash: schema, release).  a: schema, release.
# Returns {schema, release} of the deployment after the call: ours, or a newer one left as it was.
CLAIM = """
local k, a = part('deploy')
local found = tonumber(redis.call('HGET', k.marker, 'schema') or '1')
if found > a.schema then
  return {found, redis.call('HGET', k.marker, 'release') or ''}
end
if found < a.schema or redis.call('HEXISTS', k.marker, 'release') == 0 then
  redis.call('HSET', k.marker, 'schema', a.schema, 'release', a.release)
end
return {a.schema, redis.call('HGET', k.marker, 'release')}
"""

# legacy  k: source (one of kombu's lists of the old queue), lines, control (their base lists).
#         a: count (at most this many moved), lines_queue, control_queue (their names), control (task names).
# Each message goes, in the order it would have run, to the queue its task has now; its routing key
# is rewritten so that kombu restores it there (not to the old queue) if a worker dies holding it.
# Returns how many were moved.
MOVE_LEGACY = """
local k, a = part('legacy')
local control = {}
for _, name in ipairs(a.control) do control[name] = true end
local moved = 0
while moved < a.count do
  local raw = redis.call('RPOP', k.source)
  if not raw then break end
  local task = string.match(raw, '"task"%s*:%s*"([^"]*)"')
  local target, queue = k.lines, a.lines_queue
  if task and control[task] then target, queue = k.control, a.control_queue end
  raw = string.gsub(raw, '("routing_key"%s*:%s*)"[^"]*"', '%1"' .. queue .. '"', 1)
  redis.call('LPUSH', target, raw)
  moved = moved + 1
end
return moved
"""


@dataclass(frozen=True)
class Deployment:
    schema: int  # the newest schema a process of this deployment started with
    release: str  # the release of the process that raised it there


def written() -> dict[str, int]:
    """The field a record is written with."""
    return {FIELD: SCHEMA}


def of(found: bytes | str | int | None) -> int:
    """The schema a record or message says it has (none: 1, what batchq 0.1.0 wrote)."""
    return int(found) if found else 1


def check(found: bytes | str | int | None, what: str) -> None:
    """Raise ``NewerSchema`` when ``what`` (a record, a message) has a schema this code does not know."""
    schema = of(found)
    if schema > SCHEMA:
        raise NewerSchema(newer_message(what, schema))


def newer_message(what: str, schema: int, release: str = "") -> str:
    by = f" by batchq {release}" if release else " by a newer batchq"
    return (
        f"batchq {version()} knows schema {SCHEMA} and found {what} of schema {schema} (written{by}): "
        "left as it is; upgrade this process"
    )


def claim(client: redis.Redis) -> Deployment:
    """Raise the deployment's schema to ours; ``NewerSchema`` if it is newer already."""
    call = Call({"marker": keys.SCHEMA}, {"schema": SCHEMA, "release": version()})
    schema, release = Script(client, CLAIM).run({"deploy": call})
    found = Deployment(int(schema), release.decode() if isinstance(release, bytes) else str(release))
    if found.schema > SCHEMA:
        raise NewerSchema(newer_message("a deployment", found.schema, found.release))
    return found


def deployment(client: redis.Redis) -> Deployment:
    """The deployment's schema as the last process to start left it (1 before any 0.2.0 process)."""
    schema, release = client.hmget(keys.SCHEMA, ["schema", "release"])
    return Deployment(of(schema), release.decode() if release else "")


def move_legacy_queue(client: redis.Redis) -> int:
    """Move the tasks left in Celery's default queue (``celery``) into batchq's two queues; how many."""
    script = Script(client, MOVE_LEGACY)
    args = {
        "count": MOVE_CHUNK, "lines_queue": keys.LINE_QUEUE, "control_queue": keys.CONTROL_QUEUE,
        "control": list(keys.CONTROL_TASKS),
    }  # fmt: skip
    moved = 0
    for source in keys.queue_lists(LEGACY_QUEUE):
        call = Call({"source": source, "lines": keys.LINE_QUEUE, "control": keys.CONTROL_QUEUE}, args)
        while step := int(script.run({"legacy": call})):
            moved += step
    return moved
