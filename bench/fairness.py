"""Fair scheduling benchmark: how long a small batch waits behind big ones, and how tenants share.

    python -m bench.fairness            # every scenario (about 4 minutes)
    python -m bench.fairness --quick    # smaller batches, for a smoke run

One real batchq (Redis, mock upstream, API, one Celery worker x 128 threads), upstream latency
200 ms, the default settings otherwise. Tenants are managed API keys (weights set per key).
Prints each figure next to its target (issue "Fair scheduling"); nothing here is asserted.

- small behind big: a 10-line batch created 3 s after the big ones started, create -> completed.
- two tenants: Jain's fairness index of the two tenants' lines done per 0.5 s interval, from the
  first sample with 256 lines done until one tenant runs out of lines.
- 4 batches vs 1: the share of the lines done in the first 10 s that goes to the 1-batch tenant;
  the same with one batch each and weights 3 : 1 (the weighted tenant's share).
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx2
import orjson
import redis

from batchq.local.stack import Stack
from batchq.storage import keys
from batchq.storage.apikeys import ApiKeyStore

CHAT = "/v1/chat/completions"
LATENCY_MS = 200
SAMPLE_S = 0.5


@dataclass
class Tenant:
    name: str
    key: str
    api: httpx2.Client


def rows(count: int, tag: str) -> bytes:
    body = {"model": "bench", "messages": [{"role": "user", "content": "hi"}]}
    return b"".join(
        orjson.dumps({"custom_id": f"{tag}-{i}", "method": "POST", "url": CHAT, "body": body}) + b"\n"
        for i in range(count)
    )


def create(tenant: Tenant, lines: int, tag: str) -> str:
    uploaded = tenant.api.post("/files", data={"purpose": "batch"}, files={"file": ("in.jsonl", rows(lines, tag))})
    uploaded.raise_for_status()
    batch = tenant.api.post("/batches", json={"input_file_id": uploaded.json()["id"], "endpoint": CHAT})
    batch.raise_for_status()
    return str(batch.json()["id"])


def done(r: redis.Redis, batch_id: str) -> int:
    completed, failed = r.hmget(keys.batch(batch_id), ["completed", "failed"])
    return int(completed or 0) + int(failed or 0)


def status(r: redis.Redis, batch_id: str) -> str:
    value = r.hget(keys.batch(batch_id), "status")
    return value.decode() if value else "gone"


def in_progress(r: redis.Redis, batch_ids: list[str]) -> bool:
    return all(status(r, b) == "in_progress" for b in batch_ids)


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.02)


def cancel_all(tenants: list[Tenant], r: redis.Redis, batch_ids: list[str]) -> None:
    for tenant in tenants:
        for batch_id in batch_ids:
            tenant.api.post(f"/batches/{batch_id}/cancel")  # 404 for the other tenant's: fine
    wait_for(lambda: all(status(r, b) in ("cancelled", "completed") for b in batch_ids), 120, "cancelled")


def small_behind(stack: Stack, r: redis.Redis, big: Tenant, small: Tenant, sizes: list[int]) -> float:
    """Seconds from create to completed for a 10-line batch created 3 s after ``sizes`` started."""
    bigs = [create(big, n, f"big{i}") for i, n in enumerate(sizes)]
    wait_for(lambda: in_progress(r, bigs), 60, "big batches running")
    time.sleep(3)
    started = time.monotonic()
    small_id = create(small, 10, "small")
    wait_for(lambda: status(r, small_id) == "completed", 300, "small batch completed")
    seconds = time.monotonic() - started
    cancel_all([big], r, bigs)
    return seconds


def shares(r: redis.Redis, groups: dict[str, list[str]], until: Callable[[float, dict[str, int]], bool]) -> list:
    """(elapsed, lines done per group) every SAMPLE_S until ``until`` says stop."""
    samples = []
    started = time.monotonic()
    while True:
        counts = {name: sum(done(r, b) for b in ids) for name, ids in groups.items()}
        elapsed = time.monotonic() - started
        samples.append((elapsed, counts))
        if until(elapsed, counts):
            return samples
        time.sleep(max(0.0, started + len(samples) * SAMPLE_S - time.monotonic()))


def jain(values: list[float]) -> float:
    total = sum(values)
    squares = sum(v * v for v in values)
    return total * total / (len(values) * squares) if squares else 1.0


def two_tenants(r: redis.Redis, a: Tenant, b: Tenant, lines: int) -> tuple[float, int]:
    """The lowest Jain index over the 0.5 s intervals while both tenants had lines left, and how many."""
    ids = {"a": [create(a, lines, "a")], "b": [create(b, lines, "b")]}
    samples = shares(r, ids, lambda _, c: min(c.values()) >= lines)
    indices = []
    for (_, before), (_, after) in itertools.pairwise(samples):
        if sum(before.values()) < 256 or max(after.values()) >= lines:
            continue  # warming up, or one tenant has run out of work
        indices.append(jain([after[n] - before[n] for n in after]))
    return (min(indices) if indices else float("nan")), len(indices)


def first_10s_share(r: redis.Redis, a: Tenant, b: Tenant, a_batches: int, lines: int, tenants: list[Tenant]) -> float:
    """Tenant b's share of the lines done in the first 10 s after both started."""
    ids = {"a": [create(a, lines, f"a{i}") for i in range(a_batches)], "b": [create(b, lines, "b")]}
    wait_for(lambda: in_progress(r, ids["a"] + ids["b"]), 60, "batches running")
    first = shares(r, ids, lambda elapsed, _: elapsed >= 10)
    start, end = first[0][1], first[-1][1]
    got = {n: end[n] - start[n] for n in end}
    cancel_all(tenants, r, ids["a"] + ids["b"])
    return got["b"] / max(1, sum(got.values()))


def tenant(stack: Stack, store: ApiKeyStore, name: str, weight: float = 1.0) -> Tenant:
    _, key = store.create(name, weight)
    api = httpx2.Client(base_url=stack.api_url + "/v1", headers={"Authorization": f"Bearer {key}"}, timeout=120)
    return Tenant(name, key, api)


def report(label: str, value: str, target: str) -> None:
    print(f"  {label:<58} {value:>10}   target {target}", flush=True)


def run(workdir: Path, quick: bool) -> None:
    k = 10 if quick else 1
    env = {"BATCHQ_API_RPM_PER_KEY": "0", "BATCHQ_MAX_ACTIVE_BATCHES_PER_KEY": "0"}
    stack = Stack(workdir, api_key="sk-bench", env_overrides=env, mock_args=["--latency-ms", str(LATENCY_MS)])
    with stack.start(workers=1, concurrency=128):
        r = redis.Redis.from_url(stack.redis_url or "")
        store = ApiKeyStore(r)
        a, b = tenant(stack, store, "tenant-a"), tenant(stack, store, "tenant-b")
        print(f"== fairness: 1 worker x 128 threads, upstream latency {LATENCY_MS} ms", flush=True)
        s = small_behind(stack, r, a, b, [20_000 // k])
        report(f"10-line batch behind another tenant's {20_000 // k} lines", f"{s:.2f} s", "<= 2 s")
        s = small_behind(stack, r, a, b, [5_000 // k] * 5)
        report(f"10-line batch behind another tenant's 5 x {5_000 // k} lines", f"{s:.2f} s", "<= 2 s")
        s = small_behind(stack, r, a, a, [5_000 // k] * 5)
        report(f"10-line batch behind its own tenant's 5 x {5_000 // k} lines", f"{s:.2f} s", "<= 5 s")
        low, n = two_tenants(r, a, b, 6_000 // k)
        report(f"two tenants x {6_000 // k} lines: lowest Jain index of {n} samples", f"{low:.3f}", ">= 0.95")
        share = first_10s_share(r, a, b, 4, 3_000 // k, [a, b])
        report("4 batches vs 1: the 1-batch tenant's share of the first 10 s", f"{share:.2f}", "0.45-0.55")
        heavy, light = tenant(stack, store, "weight-3", 3.0), tenant(stack, store, "weight-1", 1.0)
        share = first_10s_share(r, light, heavy, 1, 6_000 // k, [heavy, light])
        report("weights 3 : 1, one batch each: the weight-3 tenant's share", f"{share:.2f}", "0.70-0.80")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="batchq-fairness-") as tmp:
        run(Path(tmp), args.quick)
    print("\nThe single-batch figures (ratio to the physical limit, CPU per line): python -m bench.run --case latency")


if __name__ == "__main__":
    main()
