"""What the ``batchq`` command prints: rich tables, the progress bar, the ``top`` view."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from rich.console import Console, Group
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from batchq.domain.models import Batch, FileObject, Page
from batchq.observability.overview import BatchRow, Overview, eta_s, rate, span, tenant_rates
from batchq.storage.apikeys import ApiKey

OUT = Console()
ERR = Console(stderr=True)


def overview_json(snapshot: Overview, previous: Overview | None = None) -> dict[str, Any]:
    rows = [
        asdict(row) | {"owner": {"account": row.owner.account, "user": row.owner.user}, "rate": rate(row, snapshot.at)}
        for row in snapshot.batches
    ]
    summary = {"at": snapshot.at, "queue_depth": snapshot.queue_depth, "in_flight": snapshot.in_flight}
    summary["down_since"] = snapshot.down_since
    rates = tenant_rates(snapshot, previous)
    tenants = [asdict(t) | {"lines_per_s": rates.get(t.account)} for t in snapshot.tenants]
    return summary | {"batches": rows, "tenants": tenants}


def tenant_table(snapshot: Overview, previous: Overview | None = None) -> Table:
    """Each tenant's share of the workers: lines/s (between two snapshots), in flight, waiting."""
    rates = tenant_rates(snapshot, previous)
    total = sum(rates.values())
    table = Table("tenant", "weight", "batches", "lines/s", "share", "in flight", "waiting", title="tenants")
    for t in snapshot.tenants:
        speed = rates.get(t.account)
        share = f"{speed / total:.0%}" if speed is not None and total else "-"
        table.add_row(
            t.account, f"{t.weight:g}", str(t.batches), f"{speed:.1f}" if speed is not None else "-", share,
            str(t.in_flight), str(t.waiting),
        )  # fmt: skip
    return table


def overview_tables(snapshot: Overview, previous: Overview | None = None) -> Group:
    """What ``batchq top`` shows: the tenants' shares, then every unfinished batch."""
    return Group(tenant_table(snapshot, previous), overview_table(snapshot, previous))


def overview_table(snapshot: Overview, previous: Overview | None = None) -> Table:
    before = {row.id: row for row in previous.batches} if previous else {}
    flights = ", ".join(_route_cell(snapshot, name, n) for name, n in snapshot.in_flight.items()) or "-"
    waiting = sum(row.waiting for row in snapshot.batches)
    title = f"{len(snapshot.batches)} unfinished batches · line queue {snapshot.queue_depth} (+{waiting} waiting)"
    title += f" · in flight: {flights}"
    table = Table("batch", "account", "user", "status", "done", "failed", "lines/s", "ETA", "age", title=title)
    for row in snapshot.batches:
        speed = rate(row, snapshot.at, before.get(row.id), previous.at if previous else None)
        eta = eta_s(row, speed)
        table.add_row(
            row.id, row.owner.account, row.owner.user or "", _status_cell(snapshot, row), f"{row.done}/{row.total}",
            str(row.failed), f"{speed:.1f}" if speed is not None else "-", span(eta),
            span(snapshot.at - row.created_at),
        )  # fmt: skip
    return table


def _status_cell(snapshot: Overview, row: BatchRow) -> str:
    """The status, and a finalize that cannot write its files: for how long, and why."""
    if row.finalize_failing_since is None:
        return row.status
    failing = span(snapshot.at - row.finalize_failing_since)
    return f"{row.status} (FINALIZE FAILING for {failing}: {row.finalize_error or 'unknown error'})"


def _route_cell(snapshot: Overview, route: str, in_flight: int) -> str:
    since = snapshot.down_since.get(route)
    return f"{route} {in_flight}" + (f" (DOWN for {span(snapshot.at - since)})" if since else "")


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.speed
        return Text(f"{speed:.1f} req/s" if speed else "- req/s", style="progress.data.speed")


@contextmanager
def progress_bar() -> Iterator[Callable[[Batch], None]]:
    """A live bar fed with each polled ``Batch``."""
    with counts_bar() as update:

        def show(batch: Batch) -> None:
            counts = batch.request_counts
            update(batch.status.value, counts.completed + counts.failed, counts.total or None, counts.failed)

        yield show


@contextmanager
def counts_bar() -> Iterator[Callable[[str, int, int | None, int], None]]:
    """A live bar fed with (description, lines done, lines in all, lines failed)."""
    columns = (
        TextColumn("{task.description:>11}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[red]{task.fields[failed]} failed"),
        _RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=ERR) as bar:
        task = bar.add_task("validating", total=None, failed=0)

        def update(description: str, done: int, total: int | None, failed: int) -> None:
            bar.update(task, description=description, completed=done, total=total, failed=failed)

        yield update


def when(timestamp: int | None) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S") if timestamp else "-"


def key_table(records: Sequence[ApiKey]) -> Table:
    table = Table("id", "name", "prefix", "weight", "created")
    for r in records:
        table.add_row(r.id, r.name, r.prefix + "…", f"{r.weight:g}", when(r.created_at))
    return table


def batch_table(page: Page[Batch]) -> Table:
    table = Table("id", "status", "endpoint", "done/total", "failed", "created", title="batches")
    table.columns[0].no_wrap = True
    for batch in page.data:
        counts = batch.request_counts
        done = f"{counts.completed + counts.failed}/{counts.total}"
        cells = (batch.id, batch.status.value, batch.endpoint, done, str(counts.failed), when(batch.created_at))
        table.add_row(*map(Text, cells))
    return _paged(table, page)


def file_table(page: Page[FileObject]) -> Table:
    table = Table("id", "filename", "purpose", "bytes", "created", title="files")
    table.columns[0].no_wrap = True
    for item in page.data:
        cells = (item.id, item.filename, item.purpose, f"{item.bytes:,}", when(item.created_at))
        table.add_row(*map(Text, cells))
    return _paged(table, page)


def _paged(table: Table, page: Page[Any]) -> Table:
    if page.has_more:
        table.caption = f"more: --after {page.last_id}"
    return table


def fields_table(model: BaseModel, exclude: set[str] | None = None) -> Table:
    table = Table.grid(padding=(0, 2))
    for name, value in model.model_dump(exclude_none=True, exclude=exclude).items():
        shown = when(value) if name.endswith("_at") else str(value)
        table.add_row(Text(name, style="bold"), Text(shown))
    return table


def batch_summary(batch: Batch) -> Table:
    table = fields_table(batch, exclude={"errors", "request_counts", "usage"})
    counts = batch.request_counts
    requests = f"{counts.completed} completed, {counts.failed} failed, {counts.total} total"
    table.add_row(Text("requests", style="bold"), Text(requests))
    for item in batch.errors.data if batch.errors else []:
        table.add_row(Text("error", style="bold red"), Text(f"line {item.line}: {item.code}: {item.message}"))
    return table
