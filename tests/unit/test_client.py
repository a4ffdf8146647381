"""``batchq.client`` against an in-process mock transport: URLs, errors, uploads, waiting, result lines."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest

from batchq.cli import outcome_code, uvicorn_level
from batchq.client import APIError, AsyncClient, Batch, Client, ClientError
from batchq.client import common as mod

Handler = Callable[[httpx2.Request], httpx2.Response]


def batch_json(status: str = "completed", **fields: Any) -> dict[str, Any]:
    base = {"id": "batch_1", "endpoint": "/v1/chat/completions", "input_file_id": "file-in"}
    return base | {"completion_window": "24h", "status": status, "created_at": 1} | fields


def file_json(file_id: str = "file-in") -> dict[str, Any]:
    return {"id": file_id, "bytes": 1, "created_at": 1, "filename": "input.jsonl", "purpose": "batch"}


def make(handler: Handler) -> Client:
    return Client("http://api.test", "sk-x", on_behalf_of="u1", transport=httpx2.MockTransport(handler))


@pytest.mark.parametrize(
    ("given", "base"),
    [
        ("http://h:8000", "http://h:8000/v1"),
        ("http://h:8000/", "http://h:8000/v1"),
        ("http://h:8000/v1/", "http://h:8000/v1"),
        ("https://gw/api/v1/llm", "https://gw/api/v1/llm"),
    ],
)
def test_api_base(given: str, base: str) -> None:
    assert mod.api_base(given) == base


def test_defaults_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BATCHQ_API_KEY", raising=False)
    with pytest.raises(ClientError, match="BATCHQ_API_KEY"):
        Client("http://h")
    monkeypatch.setenv("BATCHQ_API_KEY", "sk-env")
    monkeypatch.setenv("BATCHQ_API_URL", "http://env:1")
    monkeypatch.setenv("BATCHQ_ON_BEHALF_OF", "someone")
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return httpx2.Response(200, json=batch_json())

    with Client(transport=httpx2.MockTransport(handler)) as c:
        c.get("batch_1")
    assert str(seen[0].url) == "http://env:1/v1/batches/batch_1"
    assert seen[0].headers["authorization"] == "Bearer sk-env" and seen[0].headers["x-on-behalf-of"] == "someone"


def test_errors_carry_the_envelope() -> None:
    envelope = {"error": {"message": "nope", "type": "invalid_request_error", "param": None, "code": "invalid_state"}}
    with make(lambda _: httpx2.Response(409, json=envelope)) as c, pytest.raises(APIError) as raised:
        c.cancel("batch_1")
    error = raised.value
    assert (error.status_code, error.message, error.type, error.param, error.code) == (
        409,
        "nope",
        "invalid_request_error",
        None,
        "invalid_state",
    )
    with make(lambda _: httpx2.Response(502, text="bad gateway")) as c, pytest.raises(APIError) as raised:
        c.get("batch_1")
    assert raised.value.status_code == 502 and raised.value.message == "bad gateway" and raised.value.transient


def test_submit_rows_uploads_them_as_jsonl_then_creates() -> None:
    bodies: list[bytes] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        bodies.append(request.read())
        return httpx2.Response(200, json=file_json() if request.url.path == "/v1/files" else batch_json("validating"))

    with make(handler) as c:
        batch = c.submit(({"custom_id": f"r{i}"} for i in range(3)), metadata={"k": "v"})
    assert batch.status == "validating"
    assert b'{"custom_id":"r0"}\n{"custom_id":"r1"}\n{"custom_id":"r2"}\n' in bodies[0]
    assert b'name="purpose"' in bodies[0] and b'filename="input.jsonl"' in bodies[0]
    assert orjson.loads(bodies[1]) == {
        "input_file_id": "file-in",
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        "metadata": {"k": "v"},
    }


def test_wait_reports_progress_and_rides_out_transient_errors() -> None:
    answers = [httpx2.Response(503, json={}), httpx2.Response(200, json=batch_json("in_progress"))]
    answers += [httpx2.Response(200, json=batch_json("completed"))]
    seen: list[Batch] = []
    with make(lambda _: answers.pop(0)) as c:
        assert c.wait("batch_1", poll_interval=0, progress=seen.append).status == "completed"
    assert [b.status for b in seen] == ["in_progress", "completed"]


def test_wait_gives_up_on_a_timeout_and_on_persistent_errors() -> None:
    with make(lambda _: httpx2.Response(200, json=batch_json("in_progress"))) as c, pytest.raises(TimeoutError):
        c.wait("batch_1", poll_interval=0, timeout=0)
    with make(lambda _: httpx2.Response(503, json={})) as c, pytest.raises(APIError):
        c.wait("batch_1", poll_interval=0)
    with make(lambda _: httpx2.Response(404, json={})) as c, pytest.raises(APIError):
        c.wait("batch_1", poll_interval=0)


def result_server(output: bytes, errors: bytes) -> Handler:
    contents = {"/v1/files/file-out/content": output, "/v1/files/file-err/content": errors}

    def handler(request: httpx2.Request) -> httpx2.Response:
        if request.url.path in contents:
            return httpx2.Response(200, content=contents[request.url.path])
        return httpx2.Response(200, json=batch_json(output_file_id="file-out", error_file_id="file-err"))

    return handler


OUTPUT = b'{"custom_id":"a","text":"x\xe2\x80\xa8y\xc2\x85z"}\n\n{"custom_id":"b"}\n'
ERRORS = b'{"custom_id":"c"}'  # no trailing newline


def test_results_yield_output_then_error_lines_split_on_newlines_only() -> None:
    with make(result_server(OUTPUT, ERRORS)) as c:
        lines = list(c.results("batch_1"))
    assert [line["custom_id"] for line in lines] == ["a", "b", "c"]
    assert lines[0]["text"] == "x\u2028y\u0085z"


def test_lines_survive_any_chunking() -> None:
    data = OUTPUT + ERRORS
    for size in (1, 2, 7, len(data)):
        chunks = [data[i : i + size] for i in range(0, len(data), size)]
        assert [line["custom_id"] for line in mod.jsonl(chunks)] == ["a", "b", "c"]


def test_download_writes_the_whole_file_or_nothing(tmp_path: Path) -> None:
    with make(result_server(OUTPUT, ERRORS)) as c:
        assert c.download("file-out", tmp_path / "o.jsonl").read_bytes() == OUTPUT
    with make(lambda _: httpx2.Response(404, json={"error": {"message": "gone"}})) as c, pytest.raises(APIError):
        c.download("file-out", tmp_path / "missing.jsonl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.jsonl"]


def test_async_client_has_every_call_of_the_sync_one() -> None:
    def public(cls: type) -> set[str]:
        return {name for name in dir(cls) if not name.startswith("_")}

    assert public(Client) - public(AsyncClient) == set()


def test_async_client_mirrors_the_sync_one(tmp_path: Path) -> None:
    async def run() -> list[str]:
        transport = httpx2.MockTransport(result_server(OUTPUT, ERRORS))
        async with AsyncClient("http://api.test", "sk-x", transport=transport) as c:
            batch = await c.wait("batch_1", poll_interval=0)
            await c.download("file-err", tmp_path / "e.jsonl")
            return [line["custom_id"] async for line in c.results(batch)]

    assert asyncio.run(run()) == ["a", "b", "c"]
    assert (tmp_path / "e.jsonl").read_bytes() == ERRORS


@pytest.mark.parametrize(
    ("status", "completed", "failed", "code"),
    [
        ("completed", 3, 0, 0),
        ("completed", 2, 1, 2),
        ("completed", 0, 3, 2),
        ("cancelled", 1, 2, 2),
        ("expired", 0, 3, 1),
        ("failed", 0, 0, 1),
    ],
)
def test_cli_outcome_codes(status: str, completed: int, failed: int, code: int) -> None:
    counts = {"total": completed + failed, "completed": completed, "failed": failed}
    assert outcome_code(Batch.model_validate(batch_json(status, request_counts=counts))) == code


@pytest.mark.parametrize(
    ("level", "expected"),
    [("INFO", "info"), ("WARN", "warning"), ("warning", "warning"), ("FATAL", "critical"), ("15", 15), ("odd", "info")],
)
def test_uvicorn_gets_a_level_it_knows(level: str, expected: str | int) -> None:
    assert uvicorn_level(level) == expected


class FakeApi:
    """Serves one ended batch, its input and output files, and records what is uploaded."""

    def __init__(self, batch: dict[str, Any], files: dict[str, bytes]) -> None:
        self.batch, self.files = batch, files
        self.uploaded: list[bytes] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        if path == "/v1/batches/batch_1":
            return httpx2.Response(200, json=self.batch)
        if path.startswith("/v1/files/") and path.endswith("/content"):
            return httpx2.Response(200, content=self.files[path.split("/")[3]])
        if path == "/v1/files":
            self.uploaded.append(request.read())
            return httpx2.Response(200, json=file_json("file-retry"))
        assert path == "/v1/batches", path
        return httpx2.Response(
            200, json=batch_json("validating", id="batch_2", metadata=orjson.loads(request.read())["metadata"])
        )


INPUT = b"".join(
    orjson.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions", "body": {}}) + b"\n"
    for i in range(3)
)


@pytest.mark.parametrize(
    ("batch", "output", "resent"),
    [
        (batch_json("cancelled", request_counts={"total": 0, "completed": 0, "failed": 0}), None, ["c0", "c1", "c2"]),
        (batch_json("expired", output_file_id="file-out"), b'{"custom_id": "c1"}\n', ["c0", "c2"]),
        (
            batch_json("completed", output_file_id="file-out"),
            b'{"custom_id": "c0"}\n{"custom_id": "c1"}\n{"custom_id": "c2"}\n',
            [],
        ),
    ],
    ids=["cancelled-before-it-ran", "expired-halfway", "all-succeeded"],
)
def test_retry_resends_every_input_line_without_an_output_line(
    batch: dict[str, Any], output: bytes | None, resent: list[str]
) -> None:
    api = FakeApi(batch, {"file-in": INPUT} | ({"file-out": output} if output else {}))
    with make(api) as c:
        again = c.retry("batch_1")
    if not resent:
        assert again is None and api.uploaded == []
        return
    assert again is not None and again.metadata == {"retry_of": "batch_1"}
    (body,) = api.uploaded
    assert [f'"c{i}"'.encode() in body for i in range(3)] == [f"c{i}" in resent for i in range(3)]


@pytest.mark.parametrize(
    ("output", "resent"), [(None, 3), (b'{"custom_id": "c0"}\n{"custom_id": "c1"}\n{"custom_id": "c2"}\n', 0)]
)
def test_async_retry_matches_the_sync_one(output: bytes | None, resent: int) -> None:
    batch = batch_json("cancelled", output_file_id="file-out" if output else None)
    api = FakeApi(batch, {"file-in": INPUT} | ({"file-out": output} if output else {}))

    async def scenario() -> Batch | None:
        async with AsyncClient("http://api.test", "sk-x", transport=httpx2.MockTransport(api)) as c:
            return await c.retry("batch_1")

    again = asyncio.run(scenario())
    assert (again is None) == (resent == 0)
    assert [body.count(b"custom_id") for body in api.uploaded] == ([resent] if resent else [])


class Flaky:
    """Fails the first tries of each key (a 503, then a dropped connection), then answers."""

    def __init__(self, failures: int = 2) -> None:
        self.failures = failures
        self.seen: list[tuple[str, str | None, bytes]] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        path, key, body = request.url.path, request.headers.get("idempotency-key"), request.read()
        self.seen.append((path, key, body))
        tries = sum(1 for _, seen_key, _ in self.seen if seen_key == key)
        if tries <= self.failures:
            if tries % 2:
                return httpx2.Response(503, json={"error": {"message": "busy"}}, headers={"retry-after": "0"})
            raise httpx2.ConnectError("connection reset", request=request)
        return httpx2.Response(200, json=file_json() if path == "/v1/files" else batch_json("validating"))

    def keys(self, path: str) -> list[str | None]:
        return [key for seen_path, key, _ in self.seen if seen_path == path]


def test_every_create_sends_one_key_and_reuses_it_on_its_retries() -> None:
    server = Flaky()
    with Client("http://api.test", "sk-x", transport=httpx2.MockTransport(server), create_backoff_s=0) as c:
        c.submit([{"custom_id": "r0"}])
        c.submit([{"custom_id": "r1"}])
    uploads, creates = server.keys("/v1/files"), server.keys("/v1/batches")
    assert len(uploads) == len(creates) == 6  # each create: two failures, then an answer
    first, second = set(uploads[:3]) | set(creates[:3]), set(uploads[3:]) | set(creates[3:])
    assert len(set(uploads[:3])) == len(set(creates[:3])) == 1  # retries reuse their create's key
    assert len(first) == len(second) == 2 and not first & second  # every logical create has its own
    assert all(str(uuid.UUID(key or "")) == key for key in uploads + creates)
    bodies = [body for path, _, body in server.seen if path == "/v1/files"][:3]
    assert b'{"custom_id":"r0"}\n' in bodies[0] and len(set(bodies)) == 1  # each try: the same bytes


def test_a_given_key_is_kept_and_final_errors_are_not_retried() -> None:
    server = Flaky(failures=0)
    with Client("http://api.test", "sk-x", transport=httpx2.MockTransport(server), create_backoff_s=0) as c:
        c.create("file-in", "/v1/chat/completions", idempotency_key="run-7-chunk-0")
        c.submit([{"custom_id": "r0"}], idempotency_key="run-7")
    assert [key for _, key, _ in server.seen] == ["run-7-chunk-0", "run-7-file", "run-7-batch"]
    refused = {"error": {"message": "bad", "type": "invalid_request_error", "code": "idempotency_key_reused"}}
    calls: list[str | None] = []

    def conflict(request: httpx2.Request) -> httpx2.Response:
        calls.append(request.headers.get("idempotency-key"))
        return httpx2.Response(409, json=refused)

    with make(conflict) as c, pytest.raises(APIError) as raised:
        c.create("file-in", "/v1/chat/completions")
    assert raised.value.status_code == 409 and len(calls) == 1
    running = {"error": {"message": "wait", "type": "invalid_request_error", "code": "idempotency_request_in_progress"}}
    answers = [
        httpx2.Response(409, json=running, headers={"retry-after": "0"}),
        httpx2.Response(200, json=batch_json()),
    ]
    with make(lambda _: answers.pop(0)) as c:
        assert c.create("file-in", "/v1/chat/completions").id == "batch_1"  # the first try's answer, on a retry


def test_a_create_gives_up_after_its_attempts() -> None:
    server = Flaky(failures=10)
    transport = httpx2.MockTransport(server)
    client = Client("http://api.test", "sk-x", transport=transport, create_attempts=3, create_backoff_s=0)
    with client as c, pytest.raises(APIError) as raised:
        c.create("file-in", "/v1/chat/completions")
    assert raised.value.status_code == 503 and len(server.keys("/v1/batches")) == 3
    assert len(set(server.keys("/v1/batches"))) == 1


def test_async_creates_reuse_their_key_on_retries() -> None:
    server = Flaky()

    async def scenario() -> None:
        transport = httpx2.MockTransport(server)
        async with AsyncClient("http://api.test", "sk-x", transport=transport, create_backoff_s=0) as c:
            await c.submit([{"custom_id": "r0"}])

    asyncio.run(scenario())
    uploads, creates = server.keys("/v1/files"), server.keys("/v1/batches")
    assert len(uploads) == len(creates) == 3 and len(set(uploads)) == len(set(creates)) == 1
    assert uploads[0] != creates[0]


@pytest.mark.parametrize(
    ("attempt", "retry_after", "pause"),
    [(1, None, 0.5), (3, None, 2.0), (9, None, 30.0), (1, "7", 7.0), (2, "soon", 1.0)],
)
def test_create_backoff(attempt: int, retry_after: str | None, pause: float) -> None:
    assert mod.create_backoff(attempt, 0.5, retry_after) == pause


class Feed:
    """Pages of ``GET /batches/batch_1/results``: two lines per page; 503 on the first try of page 2."""

    def __init__(self, lines: int = 5) -> None:
        self.lines = lines
        self.asked: list[tuple[str | None, str | None]] = []
        self.failed_once = False

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        after, wait = request.url.params.get("after"), request.url.params.get("wait")
        self.asked.append((after, wait))
        start = int(after or 0)
        if start == 2 and not self.failed_once:
            self.failed_once = True
            return httpx2.Response(503, json={"error": {"message": "busy"}})
        end = min(self.lines, start + 2)
        body = b"".join(orjson.dumps({"custom_id": f"r{i}"}) + b"\n" for i in range(start, end))
        status = "completed" if end == self.lines else "in_progress"
        headers = {"x-batchq-next-cursor": str(end), "x-batchq-batch-status": status, "x-batchq-has-more": "false"}
        return httpx2.Response(200, content=body, headers=headers)


def test_a_follower_resumes_each_page_from_its_cursor_and_stops_at_the_end(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mod.time, "sleep", lambda _: None)
    feed = Feed()
    with make(feed) as c:
        assert [line["custom_id"] for line in c.iter_results("batch_1")] == [f"r{i}" for i in range(5)]
    assert [after for after, _ in feed.asked] == [None, "2", "2", "4"]  # the failed page is asked again
    assert {wait for _, wait in feed.asked} == {str(mod.RESULTS_WAIT_S)}  # a long poll
    feed = Feed()
    with make(feed) as c:
        pages = list(c.iter_result_pages("batch_1", "2", follow=False))
    assert [page.cursor for page in pages] == ["4"] and feed.asked[-1] == ("2", None)  # stored so far only


def test_async_follower_matches_the_sync_one() -> None:
    feed = Feed(lines=3)
    feed.failed_once = True

    async def scenario() -> list[str]:
        async with AsyncClient("http://api.test", "sk-x", transport=httpx2.MockTransport(feed)) as c:
            return [str(line["custom_id"]) async for line in c.iter_results("batch_1")]

    assert asyncio.run(scenario()) == ["r0", "r1", "r2"]
