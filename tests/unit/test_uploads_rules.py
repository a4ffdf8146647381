"""Unit tests for the pure rules of the Uploads API (batchq.domain.uploads) and the streaming join."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from batchq.domain import uploads as rules
from batchq.domain.uploads import NewUpload, UploadStatus
from batchq.errors import InvalidRequest, PayloadTooLarge
from batchq.services.uploads import join

PURPOSES = ("batch",)


def new(**kw: object) -> NewUpload:
    base: dict[str, object] = {"filename": "a.jsonl", "purpose": "batch", "bytes": 10, "mime_type": "application/jsonl"}
    return NewUpload(**(base | kw))  # type: ignore[arg-type]


def test_a_valid_new_upload_passes() -> None:
    rules.check_new(new(), PURPOSES, 100)
    rules.check_new(new(bytes=100, mime_type="text/plain"), PURPOSES, 100)


@pytest.mark.parametrize(
    ("kw", "param"),
    [({"purpose": "fine-tune"}, "purpose"), ({"mime_type": "jsonl"}, "mime_type"),
     ({"mime_type": "a/b c"}, "mime_type"), ({"mime_type": "a/b\n"}, "mime_type"), ({"bytes": 0}, "bytes"),
     ({"bytes": -5}, "bytes")],
)  # fmt: skip
def test_a_bad_new_upload_is_400(kw: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        rules.check_new(new(**kw), PURPOSES, 100)
    assert caught.value.status_code == 400 and caught.value.param == param


def test_an_upload_larger_than_a_file_may_be_is_413() -> None:
    with pytest.raises(PayloadTooLarge) as caught:
        rules.check_new(new(bytes=101), PURPOSES, 100)
    assert (caught.value.status_code, caught.value.param) == (413, "bytes")


@pytest.mark.parametrize(
    ("stored", "now", "shown"),
    [(UploadStatus.PENDING, 99, UploadStatus.PENDING), (UploadStatus.PENDING, 100, UploadStatus.EXPIRED),
     (UploadStatus.COMPLETING, 50, UploadStatus.PENDING), (UploadStatus.COMPLETED, 500, UploadStatus.COMPLETED),
     (UploadStatus.CANCELLED, 500, UploadStatus.CANCELLED), (UploadStatus.EXPIRED, 50, UploadStatus.EXPIRED)],
)  # fmt: skip
def test_shown_status(stored: UploadStatus, now: float, shown: UploadStatus) -> None:
    assert rules.shown_status(stored, 100, now) is shown


def test_part_sizes_in_the_order_given() -> None:
    assert rules.part_sizes(["b", "a"], {"a": 3, "b": 7, "c": 1}, 10) == [7, 3]


@pytest.mark.parametrize(
    ("ids", "code"),
    [([], "invalid_request"), (["a", "a"], "invalid_request"), (["a", "zz"], "invalid_request"),
     (["a"], "upload_size_mismatch"), (["a", "b", "c"], "upload_size_mismatch")],
)  # fmt: skip
def test_part_sizes_refuses(ids: list[str], code: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        rules.part_sizes(ids, {"a": 3, "b": 7, "c": 1}, 10)
    assert (caught.value.status_code, caught.value.code, caught.value.param) == (400, code, "part_ids")


def test_check_md5() -> None:
    digest = hashlib.md5(b"x", usedforsecurity=False).hexdigest()
    rules.check_md5(None, digest)
    rules.check_md5(digest.upper(), digest)
    with pytest.raises(InvalidRequest) as caught:
        rules.check_md5("0" * 32, digest)
    assert (caught.value.code, caught.value.param) == ("md5_mismatch", "md5")


def test_not_pending_names_the_state() -> None:
    error = rules.not_pending("upload_1", UploadStatus.CANCELLED, "complete")
    assert error.code == "invalid_upload_state" and "'cancelled'" in error.message


def test_join_concatenates_and_hashes(tmp_path: Path) -> None:
    blobs = [b"a" * 3_000_000, b"", b"bc\n"]
    paths = []
    for i, blob in enumerate(blobs):
        paths.append(tmp_path / f"p{i}")
        paths[-1].write_bytes(blob)
    target = tmp_path / "joined"
    assert join(paths, target) == hashlib.md5(b"".join(blobs), usedforsecurity=False).hexdigest()
    assert target.read_bytes() == b"".join(blobs)
