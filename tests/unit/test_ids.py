"""Unit tests for batchq.domain.ids (random identifiers)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from batchq.domain.ids import looks_like, new_batch_id, new_file_id, new_request_id

MAKERS = [(new_batch_id, "batch_"), (new_file_id, "file-"), (new_request_id, "batch_req_")]


@pytest.mark.parametrize(("make", "prefix"), MAKERS)
def test_ids_are_prefix_plus_32_lowercase_hex(make: Callable[[], str], prefix: str) -> None:
    value = make()
    assert value.startswith(prefix)
    body = value[len(prefix) :]
    assert len(body) == 32
    assert set(body) <= set("0123456789abcdef")
    assert looks_like(prefix, value)


@pytest.mark.parametrize(("make", "prefix"), MAKERS)
def test_ids_are_unique(make: Callable[[], str], prefix: str) -> None:
    assert len({make() for _ in range(1000)}) == 1000


@pytest.mark.parametrize(
    "value",
    [
        "batch_" + "a" * 31,
        "batch_" + "a" * 33,
        "batch_" + "A" * 32,
        "batch_" + "g" * 32,
        "batch-" + "a" * 32,
        "Batch_" + "a" * 32,
        "a" * 32,
        "",
        "batch_",
        " batch_" + "a" * 31,
    ],
)
def test_looks_like_rejects_malformed(value: str) -> None:
    assert not looks_like("batch_", value)


def test_looks_like_checks_the_prefix() -> None:
    assert not looks_like("file-", new_batch_id())
    assert not looks_like("batch_", new_file_id())
