"""Unit tests for ``batchq.services.uploads`` over a store double: how the store's verdicts become answers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from batchq.domain.models import Owner
from batchq.domain.uploads import UploadObject, UploadStatus
from batchq.errors import InvalidRequest, NotFound
from batchq.services import uploads
from batchq.storage.uploads import UploadRecord

OWNER = Owner("key_a", "u1")
UPLOAD = UploadObject(
    id="upload_1", bytes=5, created_at=1, expires_at=2**40, filename="a.jsonl", purpose="batch", status="pending"
)


@dataclass
class ScriptedStore:
    """A pending upload whose scripts answer ``verdict`` (the record may go between a read and a script)."""

    verdict: str
    moves: list[tuple[list[UploadStatus], UploadStatus]] = field(default_factory=list)

    def get(self, upload_id: str, owner: Owner, now: float | None = None) -> UploadRecord:
        return UploadRecord(UPLOAD, UploadStatus.PENDING, owner.key, None, None)

    def add_part(self, upload_id: str, part_id: str, source: Path, room: int, now: float) -> str:
        return self.verdict

    def parts(self, upload_id: str) -> dict[str, int]:
        return {"part_a": 5}

    def move(self, upload_id: str, from_: list[UploadStatus], to: UploadStatus, **_: object) -> str:
        self.moves.append((from_, to))
        return self.verdict

    def remove_parts(self, upload_id: str) -> None:
        pass


@dataclass
class FakeSettings:
    max_part_bytes: int = 100


@dataclass
class FakeRuntime:
    uploads: ScriptedStore
    settings: FakeSettings = field(default_factory=FakeSettings)


OPERATIONS: dict[str, Any] = {
    "add a part": lambda rt: uploads.add_part(rt, OWNER, UPLOAD.id, Path("part")),
    "complete": lambda rt: uploads.complete(rt, OWNER, UPLOAD.id, ["part_a"], None),
    "cancel": lambda rt: uploads.cancel(rt, OWNER, UPLOAD.id),
}


@pytest.mark.parametrize("operation", OPERATIONS)
def test_an_upload_gone_under_a_script_is_404(operation: str) -> None:
    with pytest.raises(NotFound) as caught:
        OPERATIONS[operation](FakeRuntime(ScriptedStore("gone")))
    assert caught.value.param == "upload_id" and UPLOAD.id in str(caught.value)


@pytest.mark.parametrize(
    ("operation", "status"),
    [(o, s) for o in OPERATIONS for s in ("cancelled", "expired", "completed") if (o, s) != ("cancel", "cancelled")],
)
def test_an_upload_that_left_pending_under_a_script_is_400(operation: str, status: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        OPERATIONS[operation](FakeRuntime(ScriptedStore(status)))
    assert caught.value.code == "invalid_upload_state" and f"'{status}'" in str(caught.value)


def test_a_cancel_beside_another_cancel_is_harmless() -> None:
    assert OPERATIONS["cancel"](FakeRuntime(ScriptedStore("cancelled"))).status == "cancelled"


def test_a_part_refused_while_completing_says_so() -> None:
    with pytest.raises(InvalidRequest, match="being completed") as caught:
        OPERATIONS["add a part"](FakeRuntime(ScriptedStore("completing")))
    assert caught.value.code == "invalid_upload_state"
