"""``UploadStore.add_part`` against a cancel, the expiry or a complete at every step of it, on a real
Redis and a real directory: the part is refused with the status that won, and no part file stays."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from batchq.domain.ids import new_part_id, new_upload_id
from batchq.domain.models import Owner
from batchq.domain.uploads import UploadObject, UploadStatus
from batchq.storage import keys
from batchq.storage.uploads import OK, UploadStore

pytestmark = pytest.mark.integration
OWNER = Owner("key_a", "u1")
SIZE = 20
ROOM = 40


@pytest.fixture(scope="module")
def client(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as connected:
        yield connected


@pytest.fixture
def store(client: redis.Redis, tmp_path: Path) -> UploadStore:
    return UploadStore(client, tmp_path / "data")


def new_upload(store: UploadStore) -> str:
    now = int(time.time())
    upload = UploadObject(
        id=new_upload_id(), bytes=SIZE, created_at=now, expires_at=now + 60, filename="a.jsonl", purpose="batch",
        status="pending",
    )  # fmt: skip
    store.create(upload, OWNER, "application/jsonl", None)
    return upload.id


def streamed(tmp_path: Path) -> Path:
    source = tmp_path / f"tmp-{new_part_id()}"
    source.write_bytes(b"x" * SIZE)
    return source


def cancel(store: UploadStore, upload_id: str) -> None:
    """What ``uploads.cancel`` does: the status first, then the directory."""
    assert store.move(upload_id, [UploadStatus.PENDING], UploadStatus.CANCELLED) == OK
    store.remove_parts(upload_id)


def expire(store: UploadStore, upload_id: str) -> None:
    """What the watchdog's sweep does once the upload's time has come."""
    store.r.zadd(keys.UPLOAD_EXPIRY, {upload_id: 0})
    assert store.expire_due() >= 1


def files_of(store: UploadStore, upload_id: str) -> list[str]:
    folder = store.root / upload_id
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def at_step(monkeypatch: pytest.MonkeyPatch, step: str, race: Callable[[], None]) -> None:
    """Run ``race`` at ``step`` of putting the part's file in place (the directory exists already)."""
    real_mkdir, real_replace = os.mkdir, os.replace

    def mkdir(path: Path, *args: int) -> None:
        if step == "before mkdir":
            race()
        try:
            real_mkdir(path, *args)
        finally:
            if step == "during mkdir":  # after mkdir found the directory, before anything looks again
                race()

    def replace(source: Path, target: Path) -> None:
        if step == "before the move":
            race()
        real_replace(source, target)
        if step == "after the move":
            race()

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "replace", replace)


STEPS = ["before mkdir", "during mkdir", "before the move", "after the move"]


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize(("ending", "status"), [(cancel, "cancelled"), (expire, "expired")])
def test_a_part_that_races_the_end_of_its_upload_is_refused_and_leaves_no_file(
    store: UploadStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    step: str,
    ending: Callable[[UploadStore, str], None],
    status: str,
) -> None:
    upload_id = new_upload(store)
    kept = new_part_id()
    assert store.add_part(upload_id, kept, streamed(tmp_path), ROOM, time.time()) == OK
    at_step(monkeypatch, step, lambda: ending(store, upload_id))
    assert store.add_part(upload_id, new_part_id(), streamed(tmp_path), ROOM, time.time()) == status
    assert not (store.root / upload_id).exists()


@pytest.mark.parametrize("step", STEPS)
def test_a_part_that_races_a_complete_gives_back_its_room(
    store: UploadStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    upload_id = new_upload(store)
    kept = new_part_id()
    assert store.add_part(upload_id, kept, streamed(tmp_path), ROOM, time.time()) == OK

    def completing() -> None:
        assert store.move(upload_id, [UploadStatus.PENDING], UploadStatus.COMPLETING) == OK

    at_step(monkeypatch, step, completing)
    assert store.add_part(upload_id, new_part_id(), streamed(tmp_path), ROOM, time.time()) == "completing"
    assert files_of(store, upload_id) == [kept]  # the complete's part stays; the late one went
    monkeypatch.undo()
    assert store.move(upload_id, [UploadStatus.COMPLETING], UploadStatus.PENDING) == OK  # a refused complete
    late = new_part_id()
    assert store.add_part(upload_id, late, streamed(tmp_path), ROOM, time.time()) == OK  # the room came back
    assert store.parts(upload_id) == {kept: SIZE, late: SIZE}
    assert files_of(store, upload_id) == sorted([kept, late])


def test_parts_and_a_cancel_at_once(store: UploadStore, tmp_path: Path) -> None:
    """Threads, as concurrent requests: every part is kept or refused as cancelled, and nothing stays."""
    outcomes: list[str] = []
    for _ in range(20):
        upload_id = new_upload(store)
        sources = [streamed(tmp_path) for _ in range(6)]

        def add(source: Path, upload_id: str = upload_id) -> None:
            try:
                outcomes.append(store.add_part(upload_id, new_part_id(), source, SIZE * 10, time.time()))
            except Exception as exc:  # the outcome under test: a 500 in the API
                outcomes.append(repr(exc))

        threads = [threading.Thread(target=add, args=(s,)) for s in sources]
        threads.append(threading.Thread(target=cancel, args=(store, upload_id)))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not (store.root / upload_id).exists()
    assert len(outcomes) == 120 and set(outcomes) <= {OK, "cancelled"}, sorted(set(outcomes))


def test_a_part_of_an_upload_gone_is_refused_without_a_file(store: UploadStore, tmp_path: Path) -> None:
    upload_id = new_upload(store)
    store.r.delete(keys.upload(upload_id))
    assert store.add_part(upload_id, new_part_id(), streamed(tmp_path), ROOM, time.time()) == "gone"
    assert not (store.root / upload_id).exists()
