"""``batchq submit --output`` of a file larger than one batch (``BATCHQ_MAX_LINES=500``): split,
merged, and resumed after the CLI is killed, without submitting any line twice."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from batchq.client import Client
from batchq.client.manifest import ChunkState, load, manifest_path
from batchq.local.stack import Stack
from tests.integration.conftest import start_stack
from tests.integration.helpers import CHAT, chat_row, jsonl

pytestmark = pytest.mark.integration
MAX_LINES = 500


@pytest.fixture(scope="module")
def small_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("split"), {"BATCHQ_MAX_LINES": str(MAX_LINES)}, concurrency=16)
    yield running
    running.stop()


def cli(stack: Stack, user: str, *args: str) -> subprocess.Popen[bytes]:
    env = os.environ | {"BATCHQ_API_URL": stack.api_url, "BATCHQ_API_KEY": stack.api_key, "BATCHQ_ON_BEHALF_OF": user}
    command = [sys.executable, "-m", "batchq", "submit", *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def custom_ids(path: Path) -> list[str]:
    return [orjson.loads(line)["custom_id"] for line in path.read_bytes().splitlines()]


def lines_submitted(stack: Stack, user: str) -> int:
    with Client(stack.api_url, stack.api_key, on_behalf_of=user) as bq:
        return sum(batch.request_counts.total for batch in bq.list(limit=100).data)


def test_a_file_of_three_batches_is_merged_and_resumed_after_a_kill(small_stack: Stack, tmp_path: Path) -> None:
    user, source, output = "split-a", tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_bytes(jsonl([chat_row(f"k{i}", latency_ms=15) for i in range(1200)]))
    args = [str(source), "--endpoint", CHAT, "--wait", "--output", str(output), "--poll-interval", "0.2"]
    first = cli(small_stack, user, *args)
    deadline = time.monotonic() + 30
    while not _created(manifest_path(output)):  # kill it once its first batch exists
        assert first.poll() is None and time.monotonic() < deadline, "the first batch was never created"
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=10)
    killed = load(manifest_path(output))
    assert killed is not None and not killed.finished and not output.exists()

    again = cli(small_stack, user, *args, "--json")
    out, err = again.communicate(timeout=90)
    assert again.returncode == 0, err.decode()
    assert sorted(custom_ids(output)) == sorted(f"k{i}" for i in range(1200))  # one line per custom_id
    assert (tmp_path / "out_errors.jsonl").read_bytes() == b""
    manifest = load(manifest_path(output))
    assert manifest is not None and manifest.finished and [c.lines for c in manifest.chunks] == [500, 500, 200]
    assert manifest.chunks[0].batch_id == killed.chunks[0].batch_id
    assert [b["id"] for b in orjson.loads(out)["data"]] == [c.batch_id for c in manifest.chunks]
    assert lines_submitted(small_stack, user) == 1200  # no line submitted twice


def _created(path: Path) -> bool:
    manifest = load(path)  # replaced atomically: never read half-written
    return manifest is not None and manifest.chunks[0].state is ChunkState.CREATED


def test_split_results_keep_chunk_order_and_failures_exit_2(small_stack: Stack, tmp_path: Path) -> None:
    source, output = tmp_path / "in.jsonl", tmp_path / "merged.jsonl"
    rows = [chat_row(f"m{i}", **({"status": 400} if i % 100 == 7 else {})) for i in range(700)]
    source.write_bytes(jsonl(rows) + b"\n")  # a trailing blank line goes with the last chunk
    seen = []
    with Client(small_stack.api_url, small_stack.api_key, on_behalf_of="split-b") as bq:
        result = bq.submit_many(source, output, endpoint=CHAT, poll_interval=0.2, progress=seen.append)
    assert [b.request_counts.total for b in result.batches] == [500, 200]
    assert [b.request_counts.failed for b in result.batches] == [5, 2]
    errors = custom_ids(result.errors)  # chunk order: the first batch's failed lines come first
    assert set(errors[:5]) == {"m7", "m107", "m207", "m307", "m407"} and set(errors[5:]) == {"m507", "m607"}
    assert len(custom_ids(output)) == 693 and seen[-1].done == 700 and seen[-1].status == "2/2 batches"
    args = [str(source), "--output", str(output), "--endpoint", CHAT, "--poll-interval", "0.2"]
    with open(f"{manifest_path(output)}.lock", "a") as held:  # another run holds this output
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        second = cli(small_stack, "split-b", *args)
        _, refused = second.communicate(timeout=60)
    assert second.returncode == 1 and b"Another batchq run is using" in refused
    assert lines_submitted(small_stack, "split-b") == 700
    again = cli(small_stack, "split-b", *args)  # the finished run's command again: a new run
    _, err = again.communicate(timeout=60)
    assert again.returncode == 2 and b"starting a new run" in err and lines_submitted(small_stack, "split-b") == 1400
    kept = [p for p in tmp_path.glob("merged.jsonl.batchq-manifest.json.*") if p.suffix != ".lock"]
    assert len(kept) == 1 and len(custom_ids(output)) == 693  # the first run's manifest, kept
