"""The API's entry module imports with no Redis answering (the image build imports it to compile it,
and an API started before Redis must come up and answer 503, not crash)."""

from __future__ import annotations

import os
import subprocess
import sys


def test_the_api_module_imports_while_redis_is_away() -> None:
    env = os.environ | {"BATCHQ_REDIS_URL": "redis://127.0.0.1:1/0"}
    ran = subprocess.run(
        [sys.executable, "-c", "import batchq.api.main"], env=env, capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert "deployment id not checked at start" in ran.stdout + ran.stderr  # the one warning it logs
