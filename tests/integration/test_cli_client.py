"""``batchq.client.Client`` and the ``batchq submit|batches|files`` commands against a real stack."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchq.client import APIError, AsyncClient, Client, ClientError
from batchq.local.stack import Stack
from tests.integration.helpers import CHAT, chat_row, jsonl

pytestmark = pytest.mark.integration


@pytest.fixture
def user(request: pytest.FixtureRequest) -> str:
    return f"cli-{request.node.name}"[:150]


@pytest.fixture
def api(stack: Stack, user: str) -> Iterator[Client]:
    with Client(stack.api_url, stack.api_key, on_behalf_of=user, timeout=30) as client:
        yield client


def cli(stack: Stack, user: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"BATCHQ_API_URL": stack.api_url, "BATCHQ_API_KEY": stack.api_key, "BATCHQ_ON_BEHALF_OF": user}
    command = [sys.executable, "-m", "batchq", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def test_client_submits_rows_waits_and_yields_every_result_once(api: Client) -> None:
    ids = [f"r{i}" for i in range(20)] + ["sep", "bad"]
    rows = (chat_row(f"r{i}", f"hello {i}") for i in range(20))  # a generator: never a list in memory
    extra = [chat_row("sep", "a\u2028b\u0085c"), chat_row("bad", "no", status=400)]
    seen: list[str] = []
    created = api.submit(iter([*rows, *extra]), endpoint=CHAT, metadata={"via": "client"})
    batch = api.wait(created.id, poll_interval=0.1, timeout=60, progress=lambda b: seen.append(b.status.value))
    assert batch.status == "completed" and batch.metadata == {"via": "client"}
    assert (batch.request_counts.completed, batch.request_counts.failed) == (21, 1)
    assert seen and seen[-1] == "completed"
    lines = list(api.results(batch.id))
    assert sorted(line["custom_id"] for line in lines) == sorted(ids)
    by_id = {line["custom_id"]: line for line in lines}
    assert by_id["sep"]["response"]["body"]["choices"][0]["message"]["content"] == "echo: a\u2028b\u0085c"
    assert by_id["bad"]["response"]["status_code"] == 400


def test_client_submits_a_path_and_downloads(api: Client, tmp_path: Path) -> None:
    source = tmp_path / "requests.jsonl"
    source.write_bytes(jsonl([chat_row(f"p{i}") for i in range(5)]))
    batch = api.wait(api.submit(source, endpoint=CHAT).id, poll_interval=0.1, timeout=60)
    assert batch.status == "completed" and batch.output_file_id and batch.error_file_id is None
    assert api.get_file(batch.input_file_id).filename == "requests.jsonl"
    target = api.download(batch.output_file_id, tmp_path / "out.jsonl")
    assert sorted(line["custom_id"] for line in read_jsonl(target)) == [f"p{i}" for i in range(5)]
    assert batch.id in [b.id for b in api.list(limit=100).data]


def test_client_raises_api_errors_with_the_envelope(api: Client) -> None:
    batch = api.wait(api.submit([chat_row("c0")], endpoint=CHAT).id, poll_interval=0.1, timeout=60)
    with pytest.raises(APIError) as cancelled:
        api.cancel(batch.id)
    assert cancelled.value.status_code == 409 and cancelled.value.type == "invalid_request_error"
    with pytest.raises(APIError) as missing:
        api.get("batch_does_not_exist")
    assert missing.value.status_code == 404 and missing.value.code == "not_found"


def test_cli_submit_waits_and_writes_the_files(stack: Stack, user: str, tmp_path: Path) -> None:
    source, output, errors = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    source.write_bytes(jsonl([chat_row(f"ok{i}") for i in range(8)]))
    args = ["submit", str(source), "--endpoint", CHAT, "--metadata", "k=v", "--wait", "--poll-interval", "0.2"]
    done = cli(stack, user, *args, "--output", str(output), "--errors", str(errors), "--json")
    assert done.returncode == 0, done.stderr
    batch = orjson.loads(done.stdout)
    assert batch["status"] == "completed" and batch["metadata"] == {"k": "v"}
    assert sorted(line["custom_id"] for line in read_jsonl(output)) == [f"ok{i}" for i in range(8)]
    assert errors.read_bytes() == b""  # asked for by name, no failed line: an empty file


def test_cli_submit_exits_2_when_some_lines_fail(stack: Stack, user: str, tmp_path: Path) -> None:
    source, output, errors = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    source.write_bytes(jsonl([chat_row("ok0"), chat_row("ok1"), chat_row("bad0", "x", status=400)]))
    done = cli(stack, user, "submit", str(source), "--output", str(output), "--errors", str(errors))
    assert done.returncode == 2, done.stderr
    assert sorted(line["custom_id"] for line in read_jsonl(output)) == ["ok0", "ok1"]
    assert [line["custom_id"] for line in read_jsonl(errors)] == ["bad0"]
    assert "completed" in done.stdout


def test_cli_submit_exits_1_when_validation_fails(stack: Stack, user: str, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(jsonl([chat_row("v0")]) + b"{not json\n")
    done = cli(stack, user, "submit", str(source), "--wait", "--poll-interval", "0.2", "--json")
    assert done.returncode == 1, done.stderr
    batch = orjson.loads(done.stdout)
    assert batch["status"] == "failed" and batch["errors"]["data"][0]["code"] == "invalid_json_line"


def test_cli_errors_exit_1(stack: Stack, user: str, tmp_path: Path) -> None:
    assert cli(stack, user, "submit", str(tmp_path / "missing.jsonl")).returncode == 1
    assert cli(stack, user, "submit", "x.jsonl", "--no-such-option").returncode == 1
    assert cli(stack, user, "submit", "x.jsonl", "--metadata", "novalue").returncode == 1
    missing = cli(stack, user, "batches", "get", "batch_nope")
    assert missing.returncode == 1 and "404" in missing.stderr


def test_cli_lists_batches_and_files_and_downloads(stack: Stack, user: str, api: Client, tmp_path: Path) -> None:
    batch = api.wait(api.submit([chat_row("l0"), chat_row("l1")], endpoint=CHAT).id, poll_interval=0.1, timeout=60)
    assert batch.output_file_id
    listed = cli(stack, user, "batches", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert batch.id in [b["id"] for b in orjson.loads(listed.stdout)["data"]]
    files = cli(stack, user, "files", "list", "--json")
    assert {batch.input_file_id, batch.output_file_id} <= {f["id"] for f in orjson.loads(files.stdout)["data"]}
    target = tmp_path / "dl.jsonl"
    downloaded = cli(stack, user, "files", "download", batch.output_file_id, "-o", str(target))
    assert downloaded.returncode == 0, downloaded.stderr
    assert sorted(line["custom_id"] for line in read_jsonl(target)) == ["l0", "l1"]
    piped = cli(stack, user, "files", "download", batch.output_file_id, "-o", "-")
    assert piped.stdout.encode() == target.read_bytes()


def test_cli_readable_views(stack: Stack, user: str, api: Client) -> None:
    batch = api.wait(api.submit([chat_row("v0")], endpoint=CHAT).id, poll_interval=0.1, timeout=60)
    shown = cli(stack, user, "batches", "get", batch.id)
    assert shown.returncode == 0 and batch.id in shown.stdout and "1 completed, 0 failed" in shown.stdout
    table = cli(stack, user, "batches", "list")
    assert table.returncode == 0 and batch.id in table.stdout
    cancelled = cli(stack, user, "batches", "cancel", batch.id)
    assert cancelled.returncode == 1 and "409" in cancelled.stderr
    deleted = cli(stack, user, "files", "delete", batch.input_file_id, "--json")
    assert orjson.loads(deleted.stdout) == {"id": batch.input_file_id, "object": "file", "deleted": True}


def flaky_rows(tag: str) -> list[dict[str, Any]]:
    """Two lines that succeed, and two that fail once with a 400 and succeed when sent again."""
    ok = [chat_row(f"{tag}-ok{i}", f"{tag} ok {i}") for i in range(2)]
    return ok + [chat_row(f"{tag}-flaky{i}", f"{tag} flaky {i}", status=400, fail_times=1) for i in range(2)]


def test_client_retries_only_the_lines_that_did_not_succeed(api: Client) -> None:
    first = api.wait(api.submit(flaky_rows("sync"), endpoint=CHAT, metadata={"team": "a"}).id, 0.1, 60)
    assert (first.request_counts.completed, first.request_counts.failed) == (2, 2)
    retried = api.retry(first)
    assert retried is not None and retried.metadata == {"team": "a", "retry_of": first.id}
    second = api.wait(retried.id, poll_interval=0.1, timeout=60)
    assert second.status == "completed" and second.completion_window == first.completion_window
    assert (second.request_counts.total, second.request_counts.failed) == (2, 0)
    assert sorted(line["custom_id"] for line in api.results(second)) == ["sync-flaky0", "sync-flaky1"]
    assert api.retry(second) is None  # every line succeeded: nothing to retry


def test_async_client_retries_only_the_lines_that_did_not_succeed(stack: Stack, user: str) -> None:
    async def scenario() -> list[str]:
        async with AsyncClient(stack.api_url, stack.api_key, on_behalf_of=user) as client:
            first = await client.wait((await client.submit(flaky_rows("async"), CHAT)).id, poll_interval=0.1)
            retried = await client.retry(first.id, completion_window="1h")
            assert retried is not None and retried.completion_window == "1h"
            second = await client.wait(retried.id, poll_interval=0.1)
            assert second.request_counts.failed == 0
            return sorted([line["custom_id"] async for line in client.results(second)])

    assert asyncio.run(scenario()) == ["async-flaky0", "async-flaky1"]


def test_async_client_has_the_sync_clients_bulk_lookup_and_streaming_calls(
    stack: Stack, user: str, tmp_path: Path
) -> None:
    source = tmp_path / "job.jsonl"
    source.write_bytes(jsonl([chat_row(f"many{i}") for i in range(6)]))

    async def scenario() -> None:
        async with AsyncClient(stack.api_url, stack.api_key, on_behalf_of=user) as client:
            assert (await client.limits()).max_requests_per_batch >= 6
            result = await client.submit_many(source, tmp_path / "out.jsonl", endpoint=CHAT, poll_interval=0.1)
            assert [batch.request_counts.completed for batch in result.batches] == [6]
            assert sorted(row["custom_id"] for row in read_jsonl(result.output)) == [f"many{i}" for i in range(6)]
            with open(source, "rb") as stream:
                uploaded = await client.upload_stream(stream, "again.jsonl", {"purpose": "batch"}, "async-stream-key")
            assert b"".join([chunk async for chunk in client.iter_content(uploaded.id)]) == source.read_bytes()
            created = await client.create(uploaded.id, CHAT)
            found = await client.find_batch(uploaded.id, created.created_at)
            assert found is not None and found.id == created.id
            assert await client.find_batch(uploaded.id, created.created_at + 3600) is None

    asyncio.run(scenario())


def test_client_refuses_to_retry_a_running_or_invalid_batch(api: Client, tmp_path: Path) -> None:
    running = api.submit([chat_row("slow", latency_ms=3000)], endpoint=CHAT)
    with pytest.raises(ClientError, match="retry it once it has ended"):
        api.retry(running.id)
    source = tmp_path / "invalid.jsonl"
    source.write_bytes(jsonl([chat_row("i0")]) + b"{oops\n")
    invalid = api.wait(api.submit(source).id, poll_interval=0.1, timeout=60)
    assert invalid.status == "failed"
    with pytest.raises(ClientError, match="failed validation"):
        api.retry(invalid)


def test_cli_batches_retry_waits_and_writes_the_files(stack: Stack, user: str, api: Client, tmp_path: Path) -> None:
    first = api.wait(api.submit(flaky_rows("cli"), endpoint=CHAT).id, poll_interval=0.1, timeout=60)
    output = tmp_path / "out.jsonl"
    done = cli(stack, user, "batches", "retry", first.id, "--output", str(output), "--poll-interval", "0.2", "--json")
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout)["metadata"] == {"retry_of": first.id}
    assert sorted(line["custom_id"] for line in read_jsonl(output)) == ["cli-flaky0", "cli-flaky1"]
    again = cli(stack, user, "batches", "retry", orjson.loads(done.stdout)["id"])
    assert again.returncode == 0 and "nothing to retry" in " ".join(again.stderr.split())


def test_client_sets_file_and_output_lifetimes(api: Client) -> None:
    uploaded = api.upload([chat_row("life0")], expires_after_s=7200)
    assert uploaded.expires_at == uploaded.created_at + 7200
    batch = api.wait(api.create(uploaded.id, CHAT, output_expires_after_s=3600).id, poll_interval=0.1, timeout=60)
    output = api.get_file(batch.output_file_id or "")
    assert output.expires_at == output.created_at + 3600
    with pytest.raises(APIError) as refused:
        api.upload([chat_row("life1")], expires_after_s=60)
    assert refused.value.status_code == 400 and refused.value.param == "expires_after[seconds]"


def test_a_create_sent_again_with_its_key_gets_the_first_answer(api: Client, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(jsonl([chat_row("i0"), chat_row("i1")]))
    first, again = (api.submit(source, endpoint=CHAT, idempotency_key="job-7") for _ in range(2))
    assert again.id == first.id and again.input_file_id == first.input_file_id  # upload and create replayed
    fresh = api.submit(source, endpoint=CHAT)  # no key given: a fresh one, a new batch
    assert fresh.id != first.id
    assert len({b.id for b in api.list(limit=100).data}) == 2
