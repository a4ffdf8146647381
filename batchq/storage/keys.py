"""Every Redis key batchq writes, in one place. Keys of one batch share a hash tag ``{id}``."""

from __future__ import annotations

PREFIX = "batchq"

ACTIVE_BATCHES = f"{PREFIX}:batches:active"  # set of non-terminal batch ids (the watchdog's work list)
WATCHDOG_LOCK = f"{PREFIX}:watchdog:lock"
ORPHANS_SWEPT = f"{PREFIX}:watchdog:orphans"  # set (with a TTL) while the last sweep for orphan files is recent
FILE_EXPIRY = f"{PREFIX}:files:expiry"  # sorted set: file id -> expires_at
REDIS_FIRST_SEEN = f"{PREFIX}:redis:first_seen"  # + ":" + run_id: when the watchdog first saw that process answer
RECONCILED_RUN = f"{PREFIX}:redis:reconciled"  # the Redis run_id whose lost lines the watchdog sent again
DEPLOYMENT = f"{PREFIX}:deployment"  # this deployment's id; the same id is in the marker beside the data
SCHEMA = f"{PREFIX}:schema"  # hash: the newest schema a process started with, and that process's release
PROCS = f"{PREFIX}:procs"  # hash: process -> its role, release, schema and last beat (batchq.storage.procs)
STATS = f"{PREFIX}:stats"  # hash of global counters (batchq.observability.metrics.STAT_FIELDS)
STAT_FINALIZE_FAILURES = "finalize_failures"  # STATS field: finalize attempts that could not write the files
STAT_ORPHANS_REMOVED = "orphans_removed"  # STATS field: files on disk without a record, removed

LINE_QUEUE = "batchq.lines"  # the Celery queue (kombu's Redis list) of granted line tasks
CONTROL_QUEUE = "batchq.control"  # submit, finalize and webhook tasks: never behind line work
CONTROL_TASKS = ("batchq.submit", "batchq.finalize", "batchq.webhook")  # the tasks CONTROL_QUEUE carries
PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")  # kombu's lists per priority step

# The scheduler (batchq/storage/scheduler.py): which waiting line enters LINE_QUEUE next.
SCHED_TENANTS = f"{PREFIX}:sched:tenants"  # sorted set: tenant with waiting lines -> pass (virtual time)
SCHED_URGENT = f"{PREFIX}:sched:urgent"  # sorted set: batch with waiting lines -> time it becomes urgent
SCHED_STATE = f"{PREFIX}:sched:state"  # hash: vclock (virtual time now), last:<tenant> (pass on leaving)
SCHED_WEIGHTS = f"{PREFIX}:sched:weights"  # hash: tenant -> weight (1 when absent)
SCHED_GRANTED = f"{PREFIX}:sched:granted"  # hash: tenant -> line tasks granted (a counter)
TENANT_LINES = f"{PREFIX}:sched:stored"  # hash: tenant -> lines stored (a counter)
SCHED_TENANT_PREFIX = f"{PREFIX}:sched:tenant:"  # + tenant + ":batches": sorted set batch -> pass
SCHED_PARKED = f"{PREFIX}:sched:parked"  # sorted set: batch held back while its route is down -> urgent time
LIMIT_PREFIX = f"{PREFIX}:limit:{{"  # + route + "}": the route's limiter keys, as the scheduler's Lua builds them
BATCH_PREFIX = f"{PREFIX}:batch:{{"  # + batch id + "}": what the scheduler's Lua builds keys from

RESULT_TTL_S = 7 * 86_400  # per-batch working keys outlive any sane completion window
RESULT_TTL_RENEW_S = 60  # a running batch renews that TTL at most this often (not with every line stored)
WORKING_KEPT_S = 600  # and once the batch ended, they are kept this long (a finalize that woke up late)


def queue_lists(queue: str = LINE_QUEUE) -> list[str]:
    """The Redis lists kombu keeps for ``queue``: the queue itself and one per priority step."""
    return [queue + suffix for suffix in PRIORITY_SUFFIXES]


def batch(batch_id: str) -> str:
    return f"{BATCH_PREFIX}{batch_id}}}"


def batch_done(batch_id: str) -> str:
    """Bitmap: bit i set once line i has a result (or was claimed as cancelled/expired/lost)."""
    return f"{batch(batch_id)}:done"


def batch_results(batch_id: str) -> str:
    """Hash: line index -> b"o"/b"e" + the serialized result line."""
    return f"{batch(batch_id)}:results"


def batch_order(batch_id: str) -> str:
    """List: line indices in the order their results were stored (``GET /batches/{id}/results``'s
    cursor is a position in it; the output and error files are written in this order)."""
    return f"{batch(batch_id)}:order"


def batch_leases(batch_id: str) -> str:
    """Hash: line index -> unix time until which a worker holds the line."""
    return f"{batch(batch_id)}:leases"


def batch_attempts(batch_id: str) -> str:
    """Hash: line index -> times the watchdog re-enqueued the line."""
    return f"{batch(batch_id)}:requeued"


def batch_offsets(batch_id: str) -> str:
    """String: packed (offset, length) pairs of every request line in the input file."""
    return f"{batch(batch_id)}:offsets"


def batch_pending(batch_id: str) -> str:
    """List: the line task messages not granted yet, the next one at the right end."""
    return f"{batch(batch_id)}:pending"


def sched_tenant_batches(tenant: str) -> str:
    """Sorted set: a tenant's batches with waiting lines -> pass within the tenant."""
    return f"{SCHED_TENANT_PREFIX}{tenant}:batches"


def batch_submitting(batch_id: str) -> str:
    """A lock (a token, renewed by its worker's heartbeat) while a submit validates the batch."""
    return f"{batch(batch_id)}:submitting"


def batch_lock(batch_id: str) -> str:
    return f"{batch(batch_id)}:lock"


def owner_batches(owner_key: str) -> str:
    return f"{PREFIX}:owner:{owner_key}:batches"


def file(file_id: str) -> str:
    return f"{PREFIX}:file:{file_id}"


def owner_files(owner_key: str) -> str:
    return f"{PREFIX}:owner:{owner_key}:files"


def _limit(route: str) -> str:
    return f"{LIMIT_PREFIX}{route}}}"


def limit_inflight(route: str) -> str:
    """Sorted set: request token -> expiry, one per request in flight to the route."""
    return f"{_limit(route)}:inflight"


def limit_notbefore(route: str) -> str:
    """Unix time before which no request may start (pushed forward by 429 Retry-After)."""
    return f"{_limit(route)}:notbefore"


def limit_tat(route: str) -> str:
    """GCRA theoretical arrival time for the route's requests-per-minute limit."""
    return f"{_limit(route)}:tat"


def limit_freed(route: str) -> str:
    """List: one entry per slot just given back; workers waiting at the cap block on it."""
    return f"{_limit(route)}:freed"


def limit_health(route: str) -> str:
    """Hash: the route's circuit breaker: ``open_since`` (absent: closed), ``failures`` (down outcomes
    in a row), ``opened_total``, ``closed_at``; and attempts that ended ``throttled``, ``error`` or
    ``down`` (counters, all workers)."""
    return f"{_limit(route)}:health"


def limit_probe(route: str) -> str:
    """String with a TTL: taken by the one request that may probe an open route."""
    return f"{_limit(route)}:probe"


def limit_waiters(route: str) -> str:
    """Sorted set: token -> time its entry lapses, one per line now waiting for the route to come back
    (renewed on each look at the open breaker). The scheduler parks a down route's batches only while
    some line waits there: that line's probes tell when the route is back."""
    return f"{_limit(route)}:waiters"


def limit_window(route: str) -> str:
    """Hash: the route's window ``w`` and its control's state (``s_*``: throughput, ``r_*``: the
    pace its 429s taught it, the rest: gradient and aimd)."""
    return f"{_limit(route)}:window"


API_KEY_INDEX = f"{PREFIX}:apikeys"  # hash: key id -> record with the key's digest


def api_key(digest: str) -> str:
    """String: the record of the managed key whose SHA-256 is ``digest``."""
    return f"{PREFIX}:apikey:{digest}"


def usage(account: str) -> str:
    """Hash: an account's batches in flight (``batches``) and their lines (``lines``)."""
    return f"{PREFIX}:usage:{account}"


def api_rate(account: str, minute: int) -> str:
    return f"{PREFIX}:rate:{account}:{minute}"


def idempotency(scope: str) -> str:
    """String: an Idempotency-Key's record (digest, owner token, then the answer once there is one)."""
    return f"{PREFIX}:idem:{scope}"


UPLOAD_EXPIRY = f"{PREFIX}:uploads:expiry"  # sorted set: upload id -> expires_at (the watchdog's work list)
UPLOAD_RETAIN_S = 86_400  # an upload's record outlives its expiry by this long


def upload(upload_id: str) -> str:
    """Hash: an upload's record (OpenAI fields, ``owner``, ``mime_type``, ``file_ttl_s``, ``stored``
    bytes of parts, ``file_id`` once completed)."""
    return f"{PREFIX}:upload:{{{upload_id}}}"


def upload_parts(upload_id: str) -> str:
    """Hash: part id -> size in bytes, for every part stored."""
    return f"{upload(upload_id)}:parts"
