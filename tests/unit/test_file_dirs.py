"""The data directories are batchq's own: other local users cannot read the tenants' files."""

from __future__ import annotations

import stat
from pathlib import Path

import redis

from batchq.storage.files import FileStore
from batchq.storage.uploads import UploadStore


def test_file_and_upload_directories_are_private(tmp_path: Path) -> None:
    (tmp_path / "files").mkdir(mode=0o755)  # an older install's directory is tightened too
    FileStore(redis.Redis(), tmp_path)
    UploadStore(redis.Redis(), tmp_path)
    for name in ("files", "tmp", "uploads"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o700, name
