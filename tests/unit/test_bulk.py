"""Splitting (``batchq.split``) and ``submit_many`` (``batchq.bulk``) against an in-process fake API:
chunk bounds, keys derived from the manifest, merge order, and resuming after a kill at any step."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest

from batchq.bulk import BulkRequest, submit_many
from batchq.client import Client, ClientError
from batchq.manifest import ChunkState, load, manifest_path
from batchq.split import ByteRange, plan_chunks


def rows(n: int) -> bytes:
    return b"".join(orjson.dumps({"custom_id": f"r{i}", "body": {}}) + b"\n" for i in range(n))


def test_chunks_hold_at_most_the_lines_and_bytes_allowed(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(rows(7) + b"\n\n")
    plan = plan_chunks(source, max_lines=3, max_bytes=10_000, max_line_bytes=100)
    assert [(c.first_line, c.lines) for c in plan.chunks] == [(1, 3), (4, 3), (7, 1)]
    assert plan.chunks[-1].end == plan.size == source.stat().st_size  # trailing blanks join the last chunk
    line = len(rows(1))
    by_bytes = plan_chunks(source, max_lines=100, max_bytes=2 * line + 1, max_line_bytes=100)
    assert [c.lines for c in by_bytes.chunks] == [2, 2, 2, 1]
    with ByteRange(source, by_bytes.chunks[1].start, by_bytes.chunks[1].end) as part:
        assert part.read() == rows(4)[2 * line :] and part.read() == b"" and part.seek(0) == 0
        assert part.read(5) == rows(3)[2 * line : 2 * line + 5]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "holds no requests"),
        (rows(2) + b"\n" + rows(1), "Line 3 is empty"),
        (b'{"x": "' + b"y" * 200 + b'"}\n', "Line 1 is longer"),
    ],
)
def test_inputs_no_batch_would_take_are_refused_before_anything_is_sent(
    tmp_path: Path, data: bytes, message: str
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(data)
    with pytest.raises(ClientError, match=message):
        plan_chunks(source, max_lines=3, max_bytes=10_000, max_line_bytes=100)


class Killed(BaseException):
    """The client process dies (after the request reached the server)."""


class FakeApi:
    """Batches that complete at once; each output line echoes its custom_id. ``die_after``: the
    request of that label is served, then the client 'dies' before reading the answer."""

    def __init__(self, max_lines: int = 2) -> None:
        self.max_lines = max_lines
        self.files: dict[str, bytes] = {}
        self.batches: list[dict[str, Any]] = []
        self.keys: list[tuple[str, str]] = []
        self.die_after: str | None = None

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        path, method = request.url.path, request.method
        if path == "/v1/batches/limits":
            return httpx2.Response(200, json=self.limits())
        if method == "POST":
            label = f"{path.rsplit('/', 1)[-1]}#{sum(1 for p, _ in self.keys if p == path) + 1}"
            self.keys.append((path, request.headers["idempotency-key"]))
            response = self.upload(request) if path == "/v1/files" else self.create(request)
            if label == self.die_after:
                raise Killed(label)
            return response
        if path == "/v1/batches":
            return httpx2.Response(200, json={"object": "list", "data": self.batches[::-1], "has_more": False})
        if path.endswith("/content"):
            return httpx2.Response(200, content=self.files[path.split("/")[3]])
        return httpx2.Response(200, json=next(b for b in self.batches if b["id"] == path.rsplit("/", 1)[-1]))

    def limits(self) -> dict[str, Any]:
        return {
            "max_requests_per_batch": self.max_lines, "max_file_bytes": 1 << 20, "max_line_bytes": 1 << 10,
            "endpoints": [], "min_completion_window": "1h", "max_completion_window": "24h",
            "max_active_batches_per_key": 0, "max_enqueued_requests_per_key": 0, "requests_per_minute_per_key": 0,
            "max_results_page_lines": 1, "max_results_page_bytes": 1,
        }  # fmt: skip

    def upload(self, request: httpx2.Request) -> httpx2.Response:
        file_id = f"file-in{len(self.files)}"
        self.files[file_id] = b"\n".join(re.findall(rb'\{"custom_id".*', request.read())) + b"\n"
        return httpx2.Response(
            200, json={"id": file_id, "bytes": 1, "created_at": 1, "filename": "x", "purpose": "batch"}
        )

    def create(self, request: httpx2.Request) -> httpx2.Response:
        body = orjson.loads(request.read())
        n = len(self.batches)
        ids = [orjson.loads(line)["custom_id"] for line in self.files[body["input_file_id"]].splitlines()]
        self.files[f"file-out{n}"] = b"".join(orjson.dumps({"custom_id": i}) + b"\n" for i in ids)
        counts = {"total": len(ids), "completed": len(ids), "failed": 0}
        batch = {"id": f"batch_{n}", "endpoint": body["endpoint"], "input_file_id": body["input_file_id"]}
        batch |= {"completion_window": "24h", "status": "completed", "created_at": 2_000_000_000}
        self.batches.append(batch | {"request_counts": counts, "output_file_id": f"file-out{n}"})
        return httpx2.Response(200, json=self.batches[-1])


def run(api: FakeApi, source: Path) -> list[str]:
    output = source.with_name("out.jsonl")
    request = BulkRequest(source, output, source.with_name("errors.jsonl"), "/v1/chat/completions")
    with Client("http://api.test", "sk-x", transport=httpx2.MockTransport(api), create_backoff_s=0) as c:
        result = submit_many(c, request, poll_interval=0)
    assert [b.id for b in result.batches] == [c.batch_id for c in (load(result.manifest) or pytest.fail()).chunks]
    return [orjson.loads(line)["custom_id"] for line in output.read_bytes().splitlines()]


def test_chunks_are_merged_in_order_with_keys_from_the_manifest(tmp_path: Path) -> None:
    api, source = FakeApi(), tmp_path / "in.jsonl"
    source.write_bytes(rows(5))
    assert run(api, source) == [f"r{i}" for i in range(5)]
    manifest = load(manifest_path(tmp_path / "out.jsonl"))
    assert manifest is not None and manifest.finished and (tmp_path / "errors.jsonl").read_bytes() == b""
    expected = [f"batchq-{manifest.run_id}-{i}-{kind}" for i in range(3) for kind in ("file", "batch")]
    assert [key for _, key in api.keys] == expected
    assert run(api, source) == [f"r{i}" for i in range(5)] and len(api.keys) == 6  # finished: nothing sent


@pytest.mark.parametrize("dies", ["files#2", "batches#2", "batches#3"])
def test_a_run_killed_after_any_create_resumes_without_a_second_batch(tmp_path: Path, dies: str) -> None:
    api, source = FakeApi(), tmp_path / "in.jsonl"
    source.write_bytes(rows(5))
    api.die_after = dies
    with pytest.raises(Killed):
        run(api, source)
    state = load(manifest_path(tmp_path / "out.jsonl"))
    assert state is not None and not state.finished
    api.die_after = None
    assert run(api, source) == [f"r{i}" for i in range(5)]
    assert len(api.batches) == 3 and sum(b["request_counts"]["total"] for b in api.batches) == 5
    if dies.startswith("batches"):  # the create had landed: found by its input file, not sent again
        assert state.chunks[int(dies[-1]) - 1].state is ChunkState.CREATING


def test_a_resumed_run_refuses_another_input_or_other_settings(tmp_path: Path) -> None:
    api, source = FakeApi(), tmp_path / "in.jsonl"
    source.write_bytes(rows(5))
    api.die_after = "batches#1"
    with pytest.raises(Killed):
        run(api, source)
    source.write_bytes(rows(5).replace(b'"r4"', b'"q4"'))  # same size, other content
    with pytest.raises(ClientError, match="changed since"):
        run(api, source)
    request = BulkRequest(source, tmp_path / "out.jsonl", tmp_path / "errors.jsonl", "/v1/embeddings")
    with Client("http://api.test", "sk-x", transport=httpx2.MockTransport(api)) as c, pytest.raises(ClientError):
        submit_many(c, request)
