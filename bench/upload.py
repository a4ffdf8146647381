"""Uploads API memory benchmark: 1 GiB through ``/v1/uploads`` keeps the API process's RSS flat.

    python -m bench.upload                 # 1 GiB in 16 parts of 64 MiB, after a 1 MiB baseline
    python -m bench.upload --mib 256       # a smaller run

One real batchq (Redis, the API; no worker is needed to upload). The ``openai`` SDK creates an
upload, sends its parts (JSONL lines of exactly 1 KiB, generated on the fly, never on the client's
disk) and completes it with the MD5, which makes the API join the parts (a streaming copy) and run
the checks of ``POST /files`` on the whole (line count, first line). A thread samples the API's RSS
from ``/proc`` every 20 ms. Printed: the API's RSS at idle, its peak during a 1 MiB upload (the
baseline), its peak during the big one, and the time each phase took. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from openai import OpenAI

from batchq.local.stack import Stack

MIB = 1 << 20
LINE_BYTES = 1024
PART_BYTES = 64 * MIB
MIME = "application/jsonl"


def line(i: int) -> bytes:
    """Request line ``i``, exactly ``LINE_BYTES`` long with its newline."""
    head = b'{"custom_id":"r%09d","method":"POST","url":"/v1/chat/completions","body":{"model":"m",' % i
    tail = b'"messages":[{"role":"user","content":"'
    end = b'"}]}}\n'
    pad = LINE_BYTES - len(head) - len(tail) - len(end)
    return head + tail + b"x" * pad + end


def parts(total: int, part_bytes: int) -> Iterator[bytes]:
    """``total`` bytes of JSONL (whole lines) in parts of ``part_bytes`` (multiples of a line)."""
    per_part = part_bytes // LINE_BYTES
    lines, index = total // LINE_BYTES, 0
    while index < lines:
        count = min(per_part, lines - index)
        yield b"".join(line(i) for i in range(index, index + count))
        index += count


class RssSampler:
    """The peak resident set size of a process, sampled from /proc every 20 ms."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> int:
        for row in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if row.startswith("VmRSS:"):
                return int(row.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.now())

    def __enter__(self) -> RssSampler:
        self.peak = self.now()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(2)


@dataclass
class Phase:
    name: str
    bytes: int
    seconds: float
    peak_rss: int


def upload(sdk: OpenAI, pid: int, name: str, total: int, part_bytes: int) -> Phase:
    md5 = hashlib.md5(usedforsecurity=False)
    with RssSampler(pid) as rss:
        start = time.perf_counter()
        created = sdk.uploads.create(bytes=total, filename=f"{name}.jsonl", mime_type=MIME, purpose="batch")
        part_ids = []
        for data in parts(total, part_bytes):
            md5.update(data)
            part_ids.append(sdk.uploads.parts.create(upload_id=created.id, data=data).id)
        done = sdk.uploads.complete(upload_id=created.id, part_ids=part_ids, md5=md5.hexdigest())
        seconds = time.perf_counter() - start
    assert done.status == "completed" and done.file is not None and done.file.bytes == total, done
    return Phase(name, total, seconds, rss.peak)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=1024, help="size of the big upload, MiB (default 1024)")
    args = parser.parse_args()
    total = args.mib * MIB
    env = {
        "BATCHQ_MAX_FILE_BYTES": str(total + MIB),
        "BATCHQ_MAX_LINES": str(total // LINE_BYTES + 1),
        "BATCHQ_API_RPM_PER_KEY": "0",
        "BATCHQ_LOG_LEVEL": "WARNING",
    }
    with tempfile.TemporaryDirectory(prefix="bench-upload-") as workdir:
        stack = Stack(Path(workdir), env_overrides=env)
        with stack:
            stack.start(workers=0)
            measure(stack, total)


def measure(stack: Stack, total: int) -> None:
    pid = stack.processes["api"].pid
    with OpenAI(base_url=stack.api_url + "/v1", api_key=stack.api_key, max_retries=0, timeout=600) as sdk:
        sdk.files.list()  # warm the process up: imports, the Redis pool
        time.sleep(1)
        idle = RssSampler(pid).now()
        small = upload(sdk, pid, "small", MIB, MIB)
        big = upload(sdk, pid, "big", total, PART_BYTES)
        after = RssSampler(pid).now()
    report(idle, [small, big], after)


def report(idle: int, phases: list[Phase], after: int) -> None:
    print(f"API RSS at idle: {idle / MIB:.1f} MiB")
    for phase in phases:
        rate = phase.bytes / MIB / phase.seconds
        growth = (phase.peak_rss - idle) / MIB
        print(
            f"{phase.name:>6}: {phase.bytes / MIB:7.0f} MiB in {phase.seconds:6.1f} s ({rate:6.1f} MiB/s); "
            f"API peak RSS {phase.peak_rss / MIB:.1f} MiB (+{growth:.1f} MiB over idle)"
        )
    big, small = phases[-1], phases[0]
    print(f"peak RSS, big upload vs 1 MiB baseline: {(big.peak_rss - small.peak_rss) / MIB:+.1f} MiB")
    print(f"API RSS after: {after / MIB:.1f} MiB")


if __name__ == "__main__":
    main()
