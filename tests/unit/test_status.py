"""Unit tests for batchq.domain.status (the batch status machine)."""

from __future__ import annotations

import pytest

from batchq.domain.models import Batch
from batchq.domain.status import (
    STAMP,
    TERMINAL,
    TRANSITIONS,
    Status,
    can_move,
    is_cancellable,
    is_terminal,
    sources_of,
)

NON_TERMINAL = [s for s in Status if s not in TERMINAL]


def test_every_status_has_a_transitions_entry() -> None:
    assert set(TRANSITIONS) == set(Status)


def test_terminal_statuses_are_exactly_the_four_final_ones() -> None:
    assert {Status.FAILED, Status.COMPLETED, Status.EXPIRED, Status.CANCELLED} == TERMINAL


@pytest.mark.parametrize("status", sorted(TERMINAL))
def test_terminal_statuses_have_no_exits(status: Status) -> None:
    assert TRANSITIONS[status] == frozenset()
    assert is_terminal(status)
    assert not any(can_move(status, target) for target in Status)


@pytest.mark.parametrize("status", NON_TERMINAL)
def test_non_terminal_statuses_have_an_exit(status: Status) -> None:
    assert TRANSITIONS[status]
    assert not is_terminal(status)


@pytest.mark.parametrize("status", NON_TERMINAL)
def test_every_non_terminal_status_can_reach_a_terminal_status(status: Status) -> None:
    seen: set[Status] = set()
    todo = [status]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(TRANSITIONS[current])
    assert seen & TERMINAL


@pytest.mark.parametrize("status", list(Status))
def test_no_status_moves_to_itself(status: Status) -> None:
    assert not can_move(status, status)


def test_nothing_moves_back_to_validating() -> None:
    assert sources_of(Status.VALIDATING) == frozenset()


def test_specific_transitions() -> None:
    assert can_move(Status.VALIDATING, Status.IN_PROGRESS)
    assert can_move(Status.VALIDATING, Status.FAILED)
    assert can_move(Status.IN_PROGRESS, Status.FINALIZING)
    assert can_move(Status.FINALIZING, Status.COMPLETED)
    assert can_move(Status.CANCELLING, Status.CANCELLED)
    assert not can_move(Status.IN_PROGRESS, Status.COMPLETED)
    assert not can_move(Status.IN_PROGRESS, Status.FAILED)
    assert not can_move(Status.CANCELLING, Status.COMPLETED)
    assert not can_move(Status.FINALIZING, Status.CANCELLING)


def test_sources_of_cancelled_is_only_cancelling() -> None:
    assert sources_of(Status.CANCELLED) == {Status.CANCELLING}


def test_sources_of_expired() -> None:
    assert sources_of(Status.EXPIRED) == {Status.VALIDATING, Status.IN_PROGRESS, Status.FINALIZING}


def test_sources_of_cancelling() -> None:
    assert sources_of(Status.CANCELLING) == {Status.VALIDATING, Status.IN_PROGRESS}


@pytest.mark.parametrize("target", list(Status))
def test_sources_of_agrees_with_can_move(target: Status) -> None:
    assert sources_of(target) == {s for s in Status if can_move(s, target)}


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (Status.VALIDATING, True),
        (Status.IN_PROGRESS, True),
        (Status.FINALIZING, False),
        (Status.CANCELLING, False),
        (Status.FAILED, False),
        (Status.COMPLETED, False),
        (Status.EXPIRED, False),
        (Status.CANCELLED, False),
    ],
)
def test_is_cancellable(status: Status, expected: bool) -> None:
    assert is_cancellable(status) is expected


@pytest.mark.parametrize("status", [s for s in Status if sources_of(s)])
def test_every_enterable_status_has_a_stamp_field_on_batch(status: Status) -> None:
    assert status in STAMP
    assert STAMP[status] in Batch.model_fields


@pytest.mark.parametrize("status", NON_TERMINAL)
def test_every_non_terminal_status_has_a_stamp_field(status: Status) -> None:
    # validating is the initial status; its stamp is the batch's created_at.
    field = STAMP.get(status, "created_at" if status is Status.VALIDATING else None)
    assert field in Batch.model_fields


def test_stamp_fields_are_distinct() -> None:
    assert len(set(STAMP.values())) == len(STAMP)
