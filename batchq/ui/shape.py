"""Pure helpers behind the dashboard's pages: filters, progress, failures, metadata, charts."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from batchq.domain.models import Batch, Owner
from batchq.domain.status import is_terminal
from batchq.errors import InvalidRequest
from batchq.observability import overview
from batchq.observability.overview import BatchRow, eta_s, rate

EXAMPLES_PER_CODE = 3
PALETTE = ("#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#bc4c00", "#0550ae", "#6e7781")


def matches(batch: Batch, status: str, query: str) -> bool:
    """The list's filter: a status (empty: any) and a case-insensitive search of id and metadata."""
    if status and batch.status.value != status:
        return False
    if not query:
        return True
    needle = query.casefold()
    haystack = [batch.id, *(f"{k}={v}" for k, v in (batch.metadata or {}).items())]
    return any(needle in text.casefold() for text in haystack)


def row_of(batch: Batch) -> BatchRow:
    counts = batch.request_counts
    return BatchRow(
        id=batch.id, owner=Owner(""), status=batch.status.value, total=counts.total, completed=counts.completed,
        failed=counts.failed, created_at=batch.created_at, in_progress_at=batch.in_progress_at,
        expires_at=batch.expires_at,
    )  # fmt: skip


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    percent: int
    eta_s: float | None  # while running and moving
    lines_per_s: float | None


def progress(batch: Batch, now: float | None = None) -> Progress:
    row = row_of(batch)
    total = row.total
    percent = int(100 * row.done / total) if total else (100 if is_terminal(batch.status) else 0)
    speed = None if is_terminal(batch.status) else rate(row, time.time() if now is None else now)
    return Progress(row.done, total, percent, eta_s(row, speed), speed)


def span(seconds: float | None) -> str:
    """A duration on a page: ``1h 05m``, ``3m 07s``, or a dash."""
    return overview.span(seconds, gap=" ", missing="–")


def when(timestamp: float | None) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if timestamp else "–"


def iso(timestamp: float | None) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat() if timestamp else ""


TIMELINE = (
    "created_at", "in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at",
    "cancelled_at",
)  # fmt: skip


def timeline(batch: Batch) -> list[tuple[str, int]]:
    """(event, unix time) of every timestamp the batch has reached, in time order."""
    stamps = [(name.removesuffix("_at").replace("_", " "), getattr(batch, name)) for name in TIMELINE]
    return sorted(((name, at) for name, at in stamps if at), key=lambda pair: pair[1])


def parse_metadata(text: str) -> dict[str, str] | None:
    """``key=value`` per line (blank lines skipped) into metadata; 400 naming the line otherwise."""
    pairs: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise InvalidRequest(f"Metadata line {number}: write key=value.", param="metadata")
        pairs[key.strip()] = value.strip()
    return pairs or None


@dataclass
class FailureGroup:
    code: str
    count: int = 0
    examples: list[tuple[str, str, str]] = field(default_factory=list)  # (custom_id, status, message)


def group_failures(lines: Iterable[dict[str, Any]]) -> list[FailureGroup]:
    """Error-file lines grouped by error code, largest group first, with the first examples of each."""
    groups: dict[str, FailureGroup] = {}
    for line in lines:
        code, status, message = _failure(line)
        group = groups.setdefault(code, FailureGroup(code))
        group.count += 1
        if len(group.examples) < EXAMPLES_PER_CODE:
            group.examples.append((str(line.get("custom_id", "")), status, message))
    return sorted(groups.values(), key=lambda g: (-g.count, g.code))


def _failure(line: dict[str, Any]) -> tuple[str, str, str]:
    error, response = line.get("error"), line.get("response")
    if isinstance(error, dict):
        return str(error.get("code") or "error"), "–", str(error.get("message") or "")
    status = response.get("status_code") if isinstance(response, dict) else None
    body = response.get("body") if isinstance(response, dict) else None
    inner = body.get("error") if isinstance(body, dict) else None
    message = str(inner.get("message") or "") if isinstance(inner, dict) else str(body or "")[:300]
    code = str(inner.get("code") or "") if isinstance(inner, dict) else ""
    return code or f"http_{status}", str(status or "–"), message


@dataclass(frozen=True)
class Series:
    name: str
    color: str
    points: str  # SVG polyline points
    last: float  # the latest lines/s


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    top: float  # lines/s at the top of the chart
    series: list[Series]
    minutes: float  # the time the chart spans


def chart(samples: Sequence[tuple[float, dict[str, float]]], width: int = 600, height: int = 160) -> Chart:
    """Lines/s per tenant between consecutive (time, lines stored per tenant) samples, as polylines."""
    rates = _rates(samples)
    tenants = sorted({name for _, point in rates for name in point})
    top = max([v for _, point in rates for v in point.values()] + [1.0])
    start, end = (rates[0][0], rates[-1][0]) if rates else (0.0, 1.0)
    spread = max(end - start, 1.0)

    def xy(at: float, value: float) -> str:
        return f"{(at - start) / spread * width:.1f},{height - value / top * height:.1f}"

    series = [
        Series(name, PALETTE[i % len(PALETTE)], " ".join(xy(at, p.get(name, 0.0)) for at, p in rates),
               rates[-1][1].get(name, 0.0))
        for i, name in enumerate(tenants)
    ]  # fmt: skip
    return Chart(width, height, top, series, spread / 60)


def _rates(samples: Sequence[tuple[float, dict[str, float]]]) -> list[tuple[float, dict[str, float]]]:
    out = []
    for (t0, before), (t1, after) in itertools.pairwise(samples):
        if t1 > t0:
            out.append((t1, {k: max(0.0, v - before.get(k, v)) / (t1 - t0) for k, v in after.items()}))
    return out
