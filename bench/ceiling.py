"""How many lines a second one Redis core carries with batchq's real line scripts (no HTTP).

    python -m bench.ceiling                      # 20,000 lines, 4 load processes, one Redis
    python -m bench.ceiling --redis 2            # batches sharded by id over two Redis instances

Each load process does, per line, the Redis work of a worker at a 0 ms upstream, with the same
calls: take a granted task from the line queue and record it as unacked (kombu's ``BRPOP`` and
``MULTI``/``ZADD``/``HSET``/``EXEC``), ``BEGIN_LINE`` (lease, first limiter slot, the scheduler's
next grant), ``COMPLETE_LINE`` (result stored once, slot back, the route's window updated), then
the ack (``MULTI``/``ZREM``/``HDEL``/``EXEC``): the kombu part only with ``--unacked`` (batchq's
workers keep a line task's delivery in memory, ``workers/kombu_redis.py``). The batch's waiting list is filled by the
scheduler beforehand, as at submission.

Prints lines/s, each Redis's CPU over the run (``INFO cpu``) as CPU-ms per line and as the share
of one core it used, and the ceiling that implies: 1000 / (CPU-ms per line) lines/s per core. On
a machine with fewer cores than load processes + Redis instances the load processes cannot drive
Redis to a full core; the per-line CPU (and so the ceiling) still holds.
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import orjson

from batchq.config import Settings
from batchq.domain.results import response_line
from batchq.domain.routing import Release, Route
from batchq.domain.scheduling import Verdict
from batchq.local.embedded import free_port, start_redis
from batchq.runtime import Runtime, build_runtime
from batchq.storage import keys
from workers.publish import line_messages

CHAT = "/v1/chat/completions"
LEASE_S = 120.0
BODY: dict[str, object] = {
    "id": "x", "object": "chat.completion", "choices": [{"message": {"role": "assistant", "content": "ok"}}],
    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
}  # fmt: skip
UNACKED, UNACKED_INDEX = "unacked", "unacked_index"  # kombu's default key names


def settings_for(url: str, workdir: Path) -> Settings:
    return Settings(redis_url=url, data_dir=workdir, upstream_url="http://127.0.0.1:9")


def setup_batch(rt: Runtime, batch_id: str, tenant: str, lines: int) -> None:
    """A running batch with every line task waiting in the scheduler, as after submission."""
    now = time.time()
    rt.redis.hset(
        keys.batch(batch_id),
        mapping={
            "status": "in_progress", "account": tenant, "owner": tenant, "total": lines, "completed": 0,
            "failed": 0, "expires_at": now + 86400, "route": "default", "input_file_id": "file-x", "endpoint": CHAT,
        },
    )  # fmt: skip
    messages = line_messages("batchq.line", [(batch_id, i, 0, 0) for i in range(lines)], keys.LINE_QUEUE)
    rt.scheduler.add(batch_id, tenant, messages, urgent_at=now + 86400, now=now)


def load(url: str, workdir: str, deadline: float, threads: int, unacked: bool) -> tuple[int, float]:
    """One load process: ``threads`` threads run lines as a worker's do, until the queue stays
    empty; returns how many lines ran and the process's CPU seconds for them."""
    rt = build_runtime(settings_for(url, Path(workdir)))
    route = rt.upstream.route(CHAT, "bench")
    assert route is not None
    started = time.process_time()
    with ThreadPoolExecutor(threads) as pool:
        done = sum(pool.map(lambda _: load_thread(rt, route, deadline, unacked), range(threads)))
    return done, time.process_time() - started


def load_thread(rt: Runtime, route: Route, deadline: float, unacked: bool) -> int:
    queues = [name for q in (keys.CONTROL_QUEUE, keys.LINE_QUEUE) for name in keys.queue_lists(q)]
    done = 0
    while time.time() < deadline:
        popped = rt.redis.brpop(queues, timeout=0.5)
        if popped is None:
            return done
        done += one_line(rt, route, popped[1], unacked)
    return done


def one_line(rt: Runtime, route: Route, raw: bytes | str, unacked: bool) -> int:
    message = orjson.loads(raw)
    tag = str(uuid.uuid4())
    if unacked:  # kombu's record of an unacked message (batchq's workers keep line tasks' in memory)
        with rt.redis.pipeline() as pipe:
            pipe.zadd(UNACKED_INDEX, {tag: time.time()})
            pipe.hset(UNACKED, tag, orjson.dumps([message, "", keys.LINE_QUEUE]))
            pipe.execute()
    batch_id, index = _args(message)
    ask = rt.upstream.limiter.acquire_call(route)
    start = rt.batches.begin_line(
        batch_id, index, LEASE_S, ask[1] if ask else None, rt.scheduler.fill_call(time.time())
    )
    ran = 0
    if start.verdict is Verdict.GO:
        token = ask[0] if ask and start.slot else None
        release = rt.upstream.limiter.release_call(Release(route, token, "ok", latency_s=0.001))
        rt.batches.complete_line(batch_id, index, response_line(f"c{index}", 200, "req", BODY), release)
        ran = 1
    if unacked:  # kombu's ack
        with rt.redis.pipeline() as pipe:
            pipe.zrem(UNACKED_INDEX, tag)
            pipe.hdel(UNACKED, tag)
            pipe.execute()
    return ran


def _args(message: dict[str, object]) -> tuple[str, int]:
    import base64

    args = orjson.loads(base64.b64decode(str(message["body"])))[0]
    return str(args[0]), int(args[1])


@dataclass
class Instance:
    url: str
    process: object
    rt: Runtime

    def cpu_s(self) -> float:
        info = self.rt.redis.info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])

    def completed(self, batch_ids: list[str]) -> int:
        return sum(int(self.rt.redis.hget(keys.batch(b), "completed") or 0) for b in batch_ids)


def run(lines: int, processes: int, instances: int, workdir: Path, threads: int, unacked: bool) -> None:
    servers: list[Instance] = []
    try:
        for n in range(instances):
            port = free_port()
            process = start_redis(port, workdir / f"redis{n}")
            url = f"redis://127.0.0.1:{port}/0"
            servers.append(Instance(url, process, build_runtime(settings_for(url, workdir))))
        measure(servers, lines, processes, workdir, threads, unacked)
    finally:
        for s in servers:
            s.process.terminate()  # type: ignore[attr-defined]


def measure(servers: list[Instance], lines: int, processes: int, workdir: Path, threads: int, unacked: bool) -> None:
    instances = len(servers)
    batches: dict[int, list[str]] = {n: [] for n in range(instances)}
    per_batch = 5000
    for i in range(max(1, lines // per_batch)):
        batch_id = f"batch_{uuid.uuid4().hex[:24]}"
        shard = i % instances  # batches sharded by id: each Redis holds whole batches, its own line queue
        setup_batch(servers[shard].rt, batch_id, f"tenant{i % 2}", min(per_batch, lines))
        batches[shard].append(batch_id)
    total = max(1, lines // per_batch) * min(per_batch, lines)
    before = [s.cpu_s() for s in servers]
    started = time.monotonic()
    deadline = time.time() + 600
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(processes * instances) as pool:
        jobs = [
            pool.apply_async(load, (servers[p % instances].url, str(workdir), deadline, threads, unacked))
            for p in range(processes * instances)
        ]
        outcomes = [j.get() for j in jobs]
    counts = [n for n, _ in outcomes]
    client_cpu = sum(c for _, c in outcomes)
    seconds = time.monotonic() - started - 0.5  # the last BRPOP's wait for nothing
    cpu = [s.cpu_s() - b for s, b in zip(servers, before, strict=True)]
    stored = sum(s.completed(batches[n]) for n, s in enumerate(servers))
    assert stored == total == sum(counts), (stored, total, counts)
    shape = f"{processes} load process(es) x {threads} threads each" + (", kombu's unacked record" if unacked else "")
    print(f"\n== {total} lines, {instances} Redis instance(s), {shape}")
    print(f"  {total / seconds:8,.0f} lines/s in all ({seconds:.1f} s)")
    for n, c in enumerate(cpu):
        share = c / seconds
        per_line = c * 1000 / (total / instances)
        print(
            f"  redis{n}: {per_line:.3f} CPU-ms per line, {share:.2f} of a core busy"
            f" -> one core carries {1000 / per_line:,.0f} lines/s"
        )
    print(f"  load processes: {client_cpu * 1000 / total:.3f} CPU-ms per line (the worker's side of these calls)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=20_000)
    parser.add_argument("--processes", type=int, default=4, help="load processes per Redis instance")
    parser.add_argument("--redis", type=int, default=1, help="independent Redis instances (batches sharded by id)")
    parser.add_argument("--threads", type=int, default=8, help="threads per load process (a worker's task threads)")
    parser.add_argument("--unacked", action="store_true", help="also kombu's unacked record per line (as before)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="batchq-ceiling-") as tmp:
        run(args.lines, args.processes, args.redis, Path(tmp), args.threads, args.unacked)


if __name__ == "__main__":
    main()
