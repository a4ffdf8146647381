"""The previous release, as the upgrade tests run it: its commit, and its code extracted from git.

One place to change when a release is cut: ``COMMIT`` becomes the commit tagged for the release
before the one being made (git tag ``v{VERSION}``).
"""

from __future__ import annotations

import subprocess
import tarfile
from io import BytesIO
from pathlib import Path

VERSION = "0.1.0"
COMMIT = "738526ef703f43bbc874e7957ad0f5beb205f43b"  # main when 0.1.0 was released (tag v0.1.0)
ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("batchq", "workers")


def unavailable() -> str | None:
    """Why the previous release cannot be extracted here (no git, no history), or None."""
    try:
        found = subprocess.run(
            ["git", "-C", str(ROOT), "cat-file", "-e", f"{COMMIT}^{{commit}}"], capture_output=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"git is not available ({error}): the previous release {VERSION} cannot be built from git"
    if found.returncode != 0:
        return f"git history without {COMMIT[:12]} (a shallow clone?): the previous release {VERSION} is not here"
    return None


def extract(target: Path) -> Path:
    """``batchq/`` and ``workers/`` of the previous release under ``target`` (run it with PYTHONPATH=target)."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", COMMIT, *PACKAGES],
        capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(target, filter="data")
    return target
