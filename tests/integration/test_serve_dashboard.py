"""``batchq serve`` turns the dashboard on: the URL it prints works after sign-in with the key it was
given, and the session secret it made is kept (0600) so a session outlives a restart."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from batchq.local.embedded import free_port, wait_for
from batchq.local.stack import Stack
from tests.integration.conftest import FAST

pytestmark = pytest.mark.integration
KEY = "sk-serve-dashboard"
PRINTED = re.compile(r"batchq serve: dashboard: (http://\S+/ui) \(sign in with an API key: one of BATCHQ_API_KEYS\)")


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Stack]:
    mock = Stack(tmp_path / "upstream")
    mock.workdir.mkdir()
    mock.start_upstream()
    yield mock
    mock.stop()


def serve(tmp_path: Path, upstream: Stack, port: int, redis_port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "BATCHQ_UI_SECRET"} | FAST | {
        "BATCHQ_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "BATCHQ_DATA_DIR": str(tmp_path / "data"),
        "BATCHQ_API_KEYS": KEY, "BATCHQ_UPSTREAM_URL": upstream.upstream_url, "BATCHQ_LOG_LEVEL": "WARNING",
    }  # fmt: skip
    args = [sys.executable, "-m", "batchq", "serve", "--port", str(port), "--concurrency", "2"]
    before = len(printed_urls(tmp_path))
    with open(tmp_path / "serve.log", "ab") as log:
        process = subprocess.Popen(args, env=env, stdout=log, stderr=log, start_new_session=True)
    wait_for(lambda: len(printed_urls(tmp_path)) > before, 60, "batchq serve to print the dashboard's URL")
    return process


def printed_urls(tmp_path: Path) -> list[str]:
    log = tmp_path / "serve.log"
    return PRINTED.findall(log.read_text(errors="replace")) if log.exists() else []


def stop(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(60)


def sign_in(browser: httpx2.Client, url: str) -> httpx2.Response:
    form = browser.get(url, follow_redirects=True)
    assert form.status_code == 200 and form.url.path == "/ui/signin", "not signed in yet: the sign-in page"
    token = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert token is not None
    return browser.post(url + "/signin", data={"key": KEY, "csrf": token.group(1)}, follow_redirects=True)


def test_serve_prints_a_dashboard_url_that_works_after_signing_in_with_its_key(tmp_path: Path, upstream: Stack) -> None:
    port, redis_port = free_port(), free_port()
    process = serve(tmp_path, upstream, port, redis_port)
    try:
        (url,) = printed_urls(tmp_path)
        assert url == f"http://127.0.0.1:{port}/ui"
        with httpx2.Client() as browser:
            batches = sign_in(browser, url)
            assert batches.status_code == 200 and batches.url.path == "/ui/batches"
            assert "Sign out" in batches.text or "signout" in batches.text
            secret = tmp_path / "data" / "ui" / "secret"
            assert stat.S_IMODE(secret.stat().st_mode) == 0o600
            assert stat.S_IMODE(secret.parent.stat().st_mode) == 0o700
            made = secret.read_text()
            stop(process)
            process = serve(tmp_path, upstream, port, redis_port)  # the same command again
            assert secret.read_text() == made, "made once, kept"
            again = browser.get(url + "/batches")
            assert again.status_code == 200 and again.url.path == "/ui/batches", "the session outlived the restart"
    finally:
        stop(process)
