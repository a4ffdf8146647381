"""Splitting (``batchq.client.split``) and ``submit_many`` (``batchq.client.bulk``) against an in-process fake API:
chunk bounds, validation before anything is sent, keys derived from the manifest, merge order, failed
chunks, one run per output, and resuming after a kill at any step."""

from __future__ import annotations

import fcntl
import re
import threading
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest

from batchq.client import Client, ClientError
from batchq.client.bulk import BulkRequest, submit_many
from batchq.client.manifest import ChunkState, load, manifest_path, save
from batchq.client.split import ByteRange, SplitLimits, plan_chunks

CHAT = "/v1/chat/completions"


def row(custom_id: str, **fields: Any) -> bytes:
    return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": CHAT, "body": {}} | fields) + b"\n"


def rows(n: int, prefix: str = "r") -> bytes:
    return b"".join(row(f"{prefix}{i}") for i in range(n))


def test_chunks_hold_at_most_the_lines_and_bytes_allowed(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(rows(7) + b"\n\n")
    plan = plan_chunks(source, CHAT, SplitLimits(max_lines=3, max_bytes=10_000, max_line_bytes=200))
    assert [(c.first_line, c.lines) for c in plan.chunks] == [(1, 3), (4, 3), (7, 1)]
    assert plan.size == source.stat().st_size and plan.chunks[-1].end == len(rows(7))  # trailing blanks: no chunk's
    line = len(rows(1))
    by_bytes = plan_chunks(source, CHAT, SplitLimits(max_lines=100, max_bytes=2 * line + 1, max_line_bytes=200))
    assert [c.lines for c in by_bytes.chunks] == [2, 2, 2, 1]
    with ByteRange(source, by_bytes.chunks[1].start, by_bytes.chunks[1].end) as part:
        assert part.read() == rows(4)[2 * line :] and part.read() == b"" and part.seek(0) == 0
        assert part.read(5) == rows(3)[2 * line : 2 * line + 5]
        assert part.seek(0) == 0 and list(part.lines()) == [row("r2"), row("r3")]


def test_trailing_blank_lines_never_push_the_last_chunk_over_the_byte_limit(tmp_path: Path) -> None:
    source, line = tmp_path / "in.jsonl", len(rows(1))
    source.write_bytes(rows(4) + b"\n" * 50)
    plan = plan_chunks(source, CHAT, SplitLimits(max_lines=100, max_bytes=2 * line, max_line_bytes=200))
    assert [c.end - c.start for c in plan.chunks] == [2 * line, 2 * line]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "line 1: empty_file: "),
        (rows(2) + b"\n" + rows(1), "line 3: invalid_json_line: Line is empty"),
        (row("r0", body={"x": "y" * 2000}), "line 1: invalid_request: Line is larger than 1024 bytes"),
        (rows(4) + row("long", body={"x": "y" * 5000}) + row("r5"), "line 5: invalid_request: Line is larger"),
        (rows(4) + b'{"custom_id": "r4", "body": {\n' + row("r5"), "line 5: invalid_json_line: "),
        (rows(4) + row("r4", url="/v1/embeddings"), "line 5: invalid_url: "),
        (rows(4) + row("r4", method="GET"), "line 5: invalid_request: method must be 'POST'"),
        (rows(4) + row("r4", body={"stream": True}), "line 5: streaming_unsupported: "),
        (rows(4) + row("r0"), "line 5: duplicate_custom_id: custom_id 'r0' appears more than once"),
    ],
)
def test_inputs_no_batch_would_take_are_refused_before_anything_is_sent(
    tmp_path: Path, data: bytes, message: str
) -> None:
    source, api = tmp_path / "in.jsonl", FakeApi()  # two lines a chunk: line 5 is in the third chunk
    source.write_bytes(data)
    with pytest.raises(ClientError, match=re.escape(message)):
        run(api, source)
    assert api.keys == [] and not manifest_path(tmp_path / "out.jsonl").exists()


def test_a_refusal_lists_every_bad_line_up_to_a_cap_and_counts_the_rest(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(rows(3) + b"[]\n" * 30 + rows(3))
    with pytest.raises(ClientError) as refused:
        plan_chunks(source, CHAT, SplitLimits(max_lines=2, max_bytes=10_000, max_line_bytes=200))
    lines = str(refused.value).splitlines()
    assert "(33 errors); nothing was sent" in lines[0]
    assert lines[1].startswith("line 4: invalid_json_line") and len(lines) == 22 and lines[-1] == "... and 13 more"


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
        self.fail: set[int] = set()  # batches (by creation order) that fail validation on line 2

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
        if n in self.fail:
            error = {"code": "invalid_request", "message": "body must be a JSON object.", "param": "body", "line": 2}
            batch |= {"status": "failed", "errors": {"object": "list", "data": [error]}}
            self.batches.append(batch | {"request_counts": {"total": 0, "completed": 0, "failed": 0}})
        else:
            self.batches.append(batch | {"request_counts": counts, "output_file_id": f"file-out{n}"})
        return httpx2.Response(200, json=self.batches[-1])


def run(api: FakeApi, source: Path, notices: list[str] | None = None) -> list[str]:
    output = source.with_name("out.jsonl")
    request = BulkRequest(source, output, source.with_name("errors.jsonl"), CHAT)
    with Client("http://api.test", "sk-x", transport=httpx2.MockTransport(api), create_backoff_s=0) as c:
        result = submit_many(c, request, poll_interval=0, notice=(notices if notices is not None else []).append)
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


def test_after_a_finished_run_the_same_call_runs_again_and_keeps_the_old_manifest(tmp_path: Path) -> None:
    api, source, notices, path = FakeApi(), tmp_path / "in.jsonl", [], manifest_path(tmp_path / "out.jsonl")
    source.write_bytes(rows(5))
    run(api, source)
    first = load(path) or pytest.fail()
    source.write_bytes(rows(5, prefix="q"))  # the next night's input: same size, other content
    assert run(api, source, notices) == [f"q{i}" for i in range(5)] and len(api.batches) == 6
    second = load(path) or pytest.fail()
    assert run(api, source, notices) == [f"q{i}" for i in range(5)] and len(api.batches) == 9  # same input: again
    kept = sorted(tmp_path.glob("out.jsonl.batchq-manifest.json.*T*Z-*"))
    assert {(load(p) or pytest.fail()).run_id for p in kept} == {first.run_id, second.run_id}
    assert len(notices) == 2 and all(any(p.name in n for p in kept) for n in notices)
    third = load(path) or pytest.fail()
    assert third.finished and third.run_id not in {first.run_id, second.run_id}


def test_a_failed_chunk_puts_each_of_its_lines_in_the_merged_errors(tmp_path: Path) -> None:
    api, source = FakeApi(), tmp_path / "in.jsonl"
    source.write_bytes(rows(5))
    api.fail.add(1)  # the second chunk (r2, r3): its batch fails validation on its line 2 (r3)
    assert run(api, source) == ["r0", "r1", "r4"]
    errors = [orjson.loads(line) for line in (tmp_path / "errors.jsonl").read_bytes().splitlines()]
    assert [(e["custom_id"], e["error"]["code"], e["response"]) for e in errors] == [
        ("r2", "batch_failed", None),
        ("r3", "invalid_request", None),
    ]
    assert "batch_1 failed (invalid_request: body must be a JSON object.)" in errors[0]["error"]["message"]


def test_a_second_run_on_the_same_output_is_refused_while_the_first_holds_it(tmp_path: Path) -> None:
    api, source = FakeApi(), tmp_path / "in.jsonl"
    source.write_bytes(rows(5))
    with open(tmp_path / "out.jsonl.batchq-manifest.json.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the first run
        with pytest.raises(ClientError, match=r"Another batchq run is using .*\.lock"):
            run(api, source)
    assert api.keys == []
    assert run(api, source) == [f"r{i}" for i in range(5)]  # released: the next run goes


def test_manifest_saves_from_two_threads_never_trip_over_each_others_temp_file(tmp_path: Path) -> None:
    api, source = FakeApi(), tmp_path / "in.jsonl"
    source.write_bytes(rows(5))
    run(api, source)
    path = manifest_path(tmp_path / "out.jsonl")
    manifest, failures = load(path), []
    assert manifest is not None

    def saves() -> None:
        try:
            for _ in range(200):
                save(manifest, path)
        except OSError as error:
            failures.append(error)

    threads = [threading.Thread(target=saves) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == [] and load(path) == manifest and [p.name for p in tmp_path.glob(".*tmp")] == []


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
