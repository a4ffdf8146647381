"""Clean answers when Redis or the disk fail, and no orphan files: real processes.

- Redis down: every route the app serves answers 503 within 1.5 s, with the OpenAI error
  envelope (the dashboard: its error page) and ``Retry-After``; never a 500.
- A full disk (a small tmpfs, where ``mount`` is permitted): an upload answers 507 and leaves
  nothing behind; a finalize that cannot write is retried, shown in ``batchq top`` and
  ``/metrics``, and completes once space returns.
- Files on disk without a record are removed by the watchdog after the grace.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import httpx2
import orjson
import pytest
from fastapi.routing import APIRoute

from batchq.api.app import create_app
from batchq.config import Settings
from batchq.domain.models import Owner
from batchq.execution import watchdog
from batchq.local.stack import Stack
from batchq.runtime import TaskQueue, build_runtime
from tests.integration.conftest import FAST, _dump_logs
from tests.integration.helpers import chat_row, client, jsonl, submit, wait

pytestmark = pytest.mark.integration
SECRET = "s" * 40
TMPFS_BYTES = 3 * 1024 * 1024
# Routes that never read Redis (/metrics answers 200 with batchq_up 0): anything below 500 while it is down.
WITHOUT_REDIS = {
    "/livez", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/v1/batches/limits",
    "/api/v1/llm/batches/limits",
}  # fmt: skip
SIGN_IN = {"/ui", "/ui/", "/ui/signin", "/ui/signout"}  # these reset the session: called without it
READS_REDIS = {"/ui/batches", "/ui/files", "/ui/batches/{batch_id}"}  # dashboard pages that must answer 503


def _mount_tmpfs(where: Path) -> str | None:
    """Mount a small tmpfs at ``where``; the reason when that is not permitted here."""
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(where)], capture_output=True, text=True
    )
    return None if done.returncode == 0 else f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}"


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str | None]]:
    workdir = tmp_path_factory.mktemp("faults")
    no_tmpfs = _mount_tmpfs(workdir / "data")
    env = FAST | {"BATCHQ_UI_SECRET": SECRET, "BATCHQ_FINALIZE_RETRY_MAX_S": "1", "BATCHQ_ORPHAN_GRACE_S": "2"}
    stack = Stack(workdir, env_overrides=env)
    try:
        yield stack.start(workers=1, concurrency=8), no_tmpfs
    except BaseException:
        _dump_logs(workdir)
        raise
    finally:
        stack.stop()
        if no_tmpfs is None:
            subprocess.run(["umount", "-l", str(workdir / "data")], check=False)


def test_files_without_a_record_are_removed_after_the_grace(faulty: tuple[Stack, str | None]) -> None:
    stack, _ = faulty
    settings = Settings(_env_file=None, redis_url=stack.redis_url or "", data_dir=stack.workdir / "data")  # type: ignore[call-arg]
    rt = build_runtime(settings.model_copy(update={"orphan_grace_s": 60.0}), pool_size=2)
    files = stack.workdir / "data" / "files"
    kept = rt.files.register("file-" + "1" * 32, Owner("acct"), "kept.jsonl", "batch", _written(stack, b"{}\n"))
    old_orphan, new_orphan = files / ("file-" + "2" * 32), files / ("file-" + "3" * 32)
    old_orphan.write_bytes(b"lost with redis\n")
    new_orphan.write_bytes(b"written, not recorded yet\n")
    lost_parts = stack.workdir / "data" / "uploads" / ("upload_" + "4" * 32)
    lost_parts.mkdir(parents=True)
    (lost_parts / "part_1").write_bytes(b"a part of an upload redis forgot\n")
    an_hour_ago = time.time() - 3600
    for path in (old_orphan, files / kept.id, lost_parts):
        os.utime(path, (an_hour_ago, an_hour_ago))
    rt.redis.delete("batchq:watchdog:orphans")
    watchdog.remove_orphans(rt)
    assert not old_orphan.exists() and new_orphan.exists() and (files / kept.id).exists()
    assert not lost_parts.exists()
    assert int(rt.redis.hget("batchq:stats", "orphans_removed") or 0) >= 1
    new_orphan.unlink()
    rt.redis.close()


def _written(stack: Stack, content: bytes) -> Path:
    temp = stack.workdir / "data" / "tmp" / "upload-test"
    temp.write_bytes(content)
    return temp


def test_an_upload_to_a_full_disk_answers_507_and_leaves_nothing(faulty: tuple[Stack, str | None]) -> None:
    stack, no_tmpfs = faulty
    if no_tmpfs:
        pytest.skip(no_tmpfs)
    big = jsonl([chat_row(f"big{i}", "x" * 4000) for i in range(1000)])  # about 4 MB: more than the tmpfs holds
    answer = httpx2.post(
        stack.api_url + "/v1/files", headers={"Authorization": f"Bearer {stack.api_key}"},
        files={"file": ("big.jsonl", big)}, data={"purpose": "batch"}, timeout=30,
    )  # fmt: skip
    assert answer.status_code == 507, answer.text
    error = answer.json()["error"]
    assert error["code"] == "insufficient_storage" and "storage is full" in error["message"]
    assert set(error) == {"message", "type", "param", "code"}
    assert list((stack.workdir / "data" / "tmp").iterdir()) == []  # nothing partial left


def test_a_finalize_that_cannot_write_is_retried_shown_and_completes_once_space_returns(
    faulty: tuple[Stack, str | None], request: pytest.FixtureRequest
) -> None:
    stack, no_tmpfs = faulty
    if no_tmpfs:
        pytest.skip(no_tmpfs)
    sdk = client(stack, user="full-disk")
    request.addfinalizer(sdk.close)
    rows = [chat_row(f"f{i}", latency_ms=300) for i in range(24)]
    batch = submit(sdk, rows)
    filler = stack.workdir / "data" / "filler"
    _fill(filler)  # the output files no longer fit
    stack.wait_until(lambda: _finalize_failing(stack, batch.id), 30, "the finalize fails")
    assert sdk.batches.retrieve(batch.id).status == "finalizing"
    metrics = httpx2.get(stack.api_url + "/metrics").text
    assert float(re.search(r"^batchq_finalize_failures_total (\S+)$", metrics, re.M).group(1)) >= 1  # type: ignore[union-attr]
    filler.unlink()  # space returns
    final = wait(sdk, batch.id, timeout=30)
    assert final.status == "completed" and final.request_counts and final.request_counts.completed == 24
    events = [
        orjson.loads(line) for line in (stack.workdir / "worker0.log").read_text().splitlines() if line[:1] == "{"
    ]
    warned = [e for e in events if e.get("batch_id") == batch.id and e["message"].startswith("finalize could not")]
    assert warned and all(e["level"] == "WARNING" for e in warned)


def _fill(path: Path) -> None:
    free = os.statvfs(path.parent)
    path.write_bytes(b"\0" * (free.f_bavail * free.f_frsize))


def _finalize_failing(stack: Stack, batch_id: str) -> bool:
    env = os.environ | {"BATCHQ_REDIS_URL": stack.redis_url or ""}
    shown = subprocess.run([sys.executable, "-m", "batchq", "top", "--json"], env=env, capture_output=True, timeout=60)
    rows = [b for b in orjson.loads(shown.stdout)["batches"] if b["id"] == batch_id]
    return bool(rows) and rows[0]["finalize_failing_since"] is not None and bool(rows[0]["finalize_error"])


def test_with_redis_down_every_route_answers_503_fast_and_never_500(faulty: tuple[Stack, str | None]) -> None:
    stack, _ = faulty
    auth = {"Authorization": f"Bearer {stack.api_key}"}
    with (
        httpx2.Client(base_url=stack.api_url, timeout=10, headers=auth) as http,
        httpx2.Client(base_url=stack.api_url, timeout=10, headers=auth) as anonymous,
    ):
        token = re.search(r'name="csrf" value="([^"]+)"', http.get("/ui/signin").text)
        assert token and http.post("/ui/signin", data={"key": stack.api_key, "csrf": token.group(1)}).status_code == 303
        csrf = re.search(r'name="csrf" value="([^"]+)"', http.get("/ui/new").text)  # the signed-in session's
        assert csrf
        stack.kill("redis")
        answered: dict[str, int] = {}
        routes = _routes()

        def timed(route: tuple[str, str]) -> tuple[httpx2.Response, float]:
            started = time.monotonic()
            answer = _call(anonymous if route[1] in SIGN_IN else http, *route, csrf.group(1))
            return answer, time.monotonic() - started

        with ThreadPoolExecutor(4) as pool:  # four at a time: the test stays short
            answers = list(pool.map(timed, routes))
        for (method, path), (answer, took) in zip(routes, answers, strict=True):
            answered[path] = answer.status_code
            assert answer.status_code != 500 and took <= 1.5, (method, path, answer.status_code, took)
            if path in WITHOUT_REDIS or (answer.status_code < 500 and path.startswith("/ui")):
                continue  # it needs no Redis: the dashboard's forms and sign-in, the docs, liveness
            assert answer.status_code == 503, (method, path, answer.status_code, answer.text[:200])
            assert answer.headers.get("retry-after"), (method, path)
            if not path.startswith("/ui"):
                assert set(answer.json()["error"]) == {"message", "type", "param", "code"}
                assert answer.json()["error"]["code"] == "service_unavailable"
        assert {answered[p] for p in READS_REDIS} == {503}
        assert answered["/api/v1/llm/batches/{batch_id}"] == answered["/v1/files"] == 503


def _routes() -> list[tuple[str, str]]:
    """Every (method, path) the app serves, as built from the code: the API, its aliases, the dashboard."""
    dead = Settings(_env_file=None, redis_url="redis://127.0.0.1:1/0", ui_secret=SECRET)  # type: ignore[call-arg]
    app = create_app(build_runtime(dead, pool_size=1, api=True), cast(TaskQueue, None))
    found = [(m, path) for path, methods in _flatten(app.routes) for m in sorted(methods - {"HEAD"})]
    prefixes = {p for _, p in found if p.startswith("/api/v1/llm/")}
    assert prefixes and any(p.startswith("/ui/") for _, p in found)  # the aliases and the dashboard are there
    return found


def _flatten(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, set[str]]]:
    """(path, methods) of every route; FastAPI 0.16x keeps included routers as such."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield prefix + route.path, set(route.methods)
        elif hasattr(route, "original_router"):
            yield from _flatten(route.original_router.routes, prefix + route.include_context.prefix)


def _call(http: httpx2.Client, method: str, template: str, csrf: str) -> httpx2.Response:
    """One request that would pass validation, so that only Redis stands in its way."""
    path = template.replace("{file_id}", "file-" + "0" * 32).replace("{batch_id}", "batch_" + "0" * 32)
    path = path.replace("{upload_id}", "upload_" + "0" * 32).replace("{rest:path}", "nowhere")
    if method != "POST":
        return http.request(method, path)
    if path.endswith("/files"):
        return http.post(path, files={"file": ("a.jsonl", jsonl([chat_row("a")]))}, data={"purpose": "batch"})
    if path.endswith("/parts"):
        return http.post(path, files={"data": ("blob", b"{}\n")})
    if path.startswith("/ui/"):
        return http.post(path, data={"csrf": csrf})
    bodies: dict[str, dict[str, Any]] = {
        "uploads": {"filename": "a.jsonl", "purpose": "batch", "bytes": 3, "mime_type": "application/jsonl"},
        "complete": {"part_ids": ["part_" + "0" * 32]},
        "batches": {"input_file_id": "file-" + "0" * 32, "endpoint": "/v1/chat/completions"},
    }
    return http.post(path, json=bodies.get(path.rsplit("/", 1)[-1], {}))
