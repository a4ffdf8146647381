"""Unit tests for batchq.execution.watchdog.plan (the pure decision per active batch)."""

from __future__ import annotations

from typing import Any

import pytest

from batchq.domain.models import Batch, RequestCounts
from batchq.domain.status import Status
from batchq.execution.watchdog import Action, Facts, plan

LEASE = 120.0
CREATED = 1_000_000
NOW = float(CREATED + 10_000)


def batch(status: Status, *, total: int = 10, completed: int = 0, failed: int = 0, **fields: Any) -> Batch:
    return Batch(
        id="batch_" + "0" * 32,
        endpoint="/v1/chat/completions",
        input_file_id="file-" + "0" * 32,
        completion_window="24h",
        status=status,
        created_at=fields.pop("created_at", CREATED),
        expires_at=fields.pop("expires_at", CREATED + 86_400),
        request_counts=RequestCounts(total=total, completed=completed, failed=failed),
        **fields,
    )


def facts(
    b: Batch,
    *,
    now: float = NOW,
    expired_leases: list[int] | None = None,
    live_leases: int = 0,
    progress_at: float = NOW,
    waiting: int = 0,
    in_queue: int = 0,
    finalize_failed_at: float | None = None,
    busy: bool = False,
) -> Facts:
    return Facts(b, now, expired_leases or [], live_leases, progress_at, waiting, in_queue, finalize_failed_at, busy)


# --- finalize --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "b",
    [
        batch(Status.FINALIZING, completed=10),
        batch(Status.CANCELLING),
        batch(Status.IN_PROGRESS, expires_at=CREATED + 100),
    ],
)
def test_a_finalize_that_failed_lately_is_left_to_its_own_retries(b: Batch) -> None:
    stale = NOW - 2 * LEASE
    assert plan(facts(b, progress_at=stale, finalize_failed_at=NOW - 10), LEASE) is Action.WAIT
    assert plan(facts(b, progress_at=stale, finalize_failed_at=NOW - LEASE - 1), LEASE) is Action.FINALIZE


@pytest.mark.parametrize("live", [0, 5])
def test_cancelling_is_finalized(live: int) -> None:
    assert plan(facts(batch(Status.CANCELLING), live_leases=live), LEASE) == "finalize"


@pytest.mark.parametrize("status", [Status.VALIDATING, Status.IN_PROGRESS, Status.FINALIZING])
def test_past_expires_at_is_finalized(status: Status) -> None:
    b = batch(status, expires_at=int(NOW) - 1)
    assert plan(facts(b, live_leases=3, expired_leases=[1]), LEASE) == "finalize"


def test_exactly_at_expires_at_is_finalized() -> None:
    assert plan(facts(batch(Status.IN_PROGRESS, expires_at=int(NOW)), live_leases=1), LEASE) == "finalize"


def test_without_expires_at_never_expires() -> None:
    b = batch(Status.IN_PROGRESS, expires_at=None)
    assert plan(facts(b, now=1e12, progress_at=1e12, live_leases=1), LEASE) == "wait"


@pytest.mark.parametrize(("completed", "failed"), [(10, 0), (0, 10), (6, 4)])
def test_in_progress_with_every_line_done_is_finalized(completed: int, failed: int) -> None:
    b = batch(Status.IN_PROGRESS, completed=completed, failed=failed)
    assert plan(facts(b, progress_at=NOW), LEASE) == "finalize"


# --- submit / validating ---------------------------------------------------------------------


def test_validating_longer_than_a_lease_is_submitted_again() -> None:
    b = batch(Status.VALIDATING, created_at=int(NOW - LEASE - 1))
    assert plan(facts(b), LEASE) == "submit"


@pytest.mark.parametrize("age", [0, 60, LEASE])
def test_validating_within_a_lease_waits(age: float) -> None:
    b = batch(Status.VALIDATING, created_at=int(NOW - age))
    assert plan(facts(b, in_queue=3), LEASE) == "wait"


# --- finalizing ------------------------------------------------------------------------------


def test_finalizing_with_recent_progress_waits() -> None:
    b = batch(Status.FINALIZING, completed=10)
    assert plan(facts(b, progress_at=NOW - LEASE), LEASE) == "wait"


def test_finalizing_without_progress_for_a_lease_is_finalized_again() -> None:
    b = batch(Status.FINALIZING, completed=10)
    assert plan(facts(b, progress_at=NOW - LEASE - 1), LEASE) == "finalize"


def test_finalizing_is_never_requeued() -> None:
    b = batch(Status.FINALIZING, completed=3)
    assert plan(facts(b, expired_leases=[4], progress_at=NOW), LEASE) == "wait"


# --- in progress -----------------------------------------------------------------------------


def test_in_progress_with_live_work_waits() -> None:
    b = batch(Status.IN_PROGRESS, completed=3)
    assert plan(facts(b, live_leases=2, progress_at=NOW - 1), LEASE) == "wait"


def test_expired_leases_are_requeued() -> None:
    b = batch(Status.IN_PROGRESS, completed=3)
    assert plan(facts(b, expired_leases=[3, 7], live_leases=2), LEASE) == "requeue_expired"


def test_lost_lines_are_resent_when_stalled_with_nothing_leased_waiting_or_queued() -> None:
    b = batch(Status.IN_PROGRESS, completed=3)
    f = facts(b, progress_at=NOW - LEASE - 1, live_leases=0)
    assert plan(f, LEASE) == "resend_lost"


@pytest.mark.parametrize(
    ("progress_age", "live", "waiting", "in_queue"),
    [
        pytest.param(LEASE, 0, 0, 0, id="not-stalled"),
        pytest.param(LEASE + 1, 1, 0, 0, id="live-lease"),
        pytest.param(LEASE + 1, 0, 2000, 0, id="lines-wait-their-turn"),
        pytest.param(LEASE + 1, 0, 0, 2, id="tasks-in-the-queue"),
    ],
)
def test_nothing_is_resent_unless_stalled_with_nothing_leased_waiting_or_queued(
    progress_age: float, live: int, waiting: int, in_queue: int
) -> None:
    b = batch(Status.IN_PROGRESS, total=5000, completed=3)
    f = facts(b, progress_at=NOW - progress_age, live_leases=live, waiting=waiting, in_queue=in_queue)
    assert plan(f, LEASE) == "wait"


def test_expired_leases_take_precedence_over_resending() -> None:
    b = batch(Status.IN_PROGRESS, completed=3)
    f = facts(b, expired_leases=[5], progress_at=NOW - LEASE - 1)
    assert plan(f, LEASE) == "requeue_expired"


def test_a_short_lease_does_not_restart_a_long_submit_or_finalize() -> None:
    """Leases are short (the worker's heartbeat renews them); one pass over a file is not."""
    lease, step = 10.0, 120.0
    validating = batch(Status.VALIDATING, created_at=int(NOW - 60))
    assert plan(facts(validating), lease, step) == "wait"
    assert plan(facts(batch(Status.VALIDATING, created_at=int(NOW - step - 1))), lease, step) == "submit"
    finalizing = batch(Status.FINALIZING, completed=10)
    assert plan(facts(finalizing, progress_at=NOW - 60, busy=True), lease, step) == "wait"
    assert plan(facts(finalizing, progress_at=NOW - step - 1, busy=True), lease, step) == "finalize"
    stalled = batch(Status.IN_PROGRESS, completed=4)
    assert plan(facts(stalled, progress_at=NOW - lease - 1), lease, step) == "resend_lost", "a lease, not a step"


def test_a_running_submit_or_finalize_is_left_alone_and_a_dead_ones_step_is_run_again() -> None:
    """``busy``: its lock is held by a worker that beats; a killed worker's lock runs out in a lease."""
    lease, step = 10.0, 120.0
    old = batch(Status.VALIDATING, created_at=int(NOW - step - 1))
    assert plan(facts(old, busy=True), lease, step) == "wait", "a long validation is not started twice"
    finalizing = batch(Status.FINALIZING, completed=10)
    assert plan(facts(finalizing, progress_at=NOW - lease - 1, busy=True), lease, step) == "wait"
    assert plan(facts(finalizing, progress_at=NOW - lease - 1), lease, step) == "finalize", "its worker died"
    assert plan(facts(finalizing, progress_at=NOW - 1), lease, step) == "wait"
