"""The pure part of ``batchq top``: rates and ETAs from snapshots."""

from __future__ import annotations

import dataclasses

from batchq.domain.models import Owner
from batchq.observability.overview import BatchRow, Overview, TenantRow, eta_s, rate, tenant_rates, tenant_rows

ROW = BatchRow(
    id="batch_1", owner=Owner("acct", "u1"), status="in_progress", total=1000, completed=180, failed=20,
    created_at=1_000, in_progress_at=1_010, expires_at=None,
)  # fmt: skip


def test_rate_between_two_snapshots_of_the_same_batch() -> None:
    before = dataclasses.replace(ROW, completed=100, failed=0)
    assert rate(ROW, now=1_020.0, before=before, before_at=1_010.0) == 10.0


def test_rate_without_an_earlier_snapshot_is_the_average_since_the_batch_started() -> None:
    assert rate(ROW, now=1_050.0) == 5.0


def test_no_rate_before_the_batch_runs_or_when_counts_went_backwards() -> None:
    assert rate(dataclasses.replace(ROW, in_progress_at=None), now=1_050.0) is None
    ahead = dataclasses.replace(ROW, completed=500)
    assert rate(ROW, now=1_050.0, before=ahead, before_at=1_040.0) == 5.0  # falls back to the average


def test_eta_is_the_remaining_lines_at_the_rate() -> None:
    assert eta_s(ROW, 8.0) == 100.0
    assert eta_s(ROW, 0.0) is None and eta_s(ROW, None) is None
    assert eta_s(dataclasses.replace(ROW, completed=1_200), 8.0) == 0


def test_tenant_rows_add_up_each_tenants_batches() -> None:
    rows = [
        dataclasses.replace(ROW, id="b1", waiting=100, leased=8),
        dataclasses.replace(ROW, id="b2", waiting=50, leased=2),
        dataclasses.replace(ROW, id="b3", owner=Owner("other"), waiting=7, leased=1),
    ]
    tenants = tenant_rows(rows, stored={"acct": 500.0}, weights={"other": 3.0})
    assert tenants == [
        TenantRow("acct", weight=1.0, stored=500, batches=2, in_flight=10, waiting=150),
        TenantRow("other", weight=3.0, stored=0, batches=1, in_flight=1, waiting=7),
    ]


def test_tenant_rates_come_from_two_snapshots() -> None:
    first = Overview(100.0, [], 0, {}, [TenantRow("a", 1.0, 100, 1, 0, 0), TenantRow("b", 1.0, 50, 1, 0, 0)])
    second = Overview(102.0, [], 0, {}, [TenantRow("a", 1.0, 300, 1, 0, 0), TenantRow("c", 1.0, 9, 1, 0, 0)])
    assert tenant_rates(second, first) == {"a": 100.0}  # c is new: no rate yet
    assert tenant_rates(second, None) == {}
