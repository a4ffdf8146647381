"""The dashboard's pure helpers: filters, progress, failures, metadata, the tenants' chart."""

from __future__ import annotations

import pytest

from batchq.domain.models import Batch, RequestCounts
from batchq.domain.status import Status
from batchq.errors import InvalidRequest
from batchq.ui import shape


def batch(status: Status = Status.IN_PROGRESS, **kw: object) -> Batch:
    fields: dict[str, object] = {
        "id": "batch_abc", "endpoint": "/v1/chat/completions", "input_file_id": "file-1", "completion_window": "24h",
        "status": status, "created_at": 1000,
    }  # fmt: skip
    return Batch.model_validate(fields | kw)


def test_the_filter_matches_status_and_searches_id_and_metadata() -> None:
    b = batch(metadata={"team": "Search"})
    assert shape.matches(b, "", "")
    assert shape.matches(b, "in_progress", "ABC")
    assert shape.matches(b, "", "team=sea")
    assert not shape.matches(b, "completed", "")
    assert not shape.matches(b, "", "nope")


def test_progress_has_an_eta_only_while_running() -> None:
    running = batch(in_progress_at=1000, request_counts=RequestCounts(total=100, completed=40, failed=10))
    p = shape.progress(running, now=1010)
    assert (p.done, p.percent, p.lines_per_s, p.eta_s) == (50, 50, 5.0, 10.0)
    finished = shape.progress(batch(Status.COMPLETED, in_progress_at=1000), now=1010)
    assert (finished.percent, finished.eta_s) == (100, None)


def test_timeline_lists_reached_timestamps_in_order() -> None:
    b = batch(Status.COMPLETED, in_progress_at=1005, finalizing_at=1010, completed_at=1011)
    assert [name for name, _ in shape.timeline(b)] == ["created", "in progress", "finalizing", "completed"]


def test_metadata_is_key_value_lines_and_a_bad_line_is_named() -> None:
    assert shape.parse_metadata("a=1\n\n b = two=2 ") == {"a": "1", "b": "two=2"}
    assert shape.parse_metadata("  ") is None
    with pytest.raises(InvalidRequest, match="line 2"):
        shape.parse_metadata("a=1\nnot a pair")


def test_failures_group_by_code_with_the_first_examples() -> None:
    lines = [
        {"custom_id": f"c{i}", "response": {"status_code": 429, "body": {"error": {"message": "slow down"}}}}
        for i in range(5)
    ]
    lines.append({"custom_id": "x", "response": None, "error": {"code": "batch_cancelled", "message": "cancelled"}})
    groups = shape.group_failures(lines)
    assert [(g.code, g.count) for g in groups] == [("http_429", 5), ("batch_cancelled", 1)]
    assert groups[0].examples == [(f"c{i}", "429", "slow down") for i in range(3)]


def test_the_chart_draws_each_tenants_rate_between_samples() -> None:
    samples = [(0.0, {"a": 0.0}), (10.0, {"a": 100.0, "b": 0.0}), (20.0, {"a": 100.0, "b": 50.0})]
    chart = shape.chart(samples, width=100, height=50)
    assert [(s.name, s.last) for s in chart.series] == [("a", 0.0), ("b", 5.0)]
    assert chart.top == 10.0
    assert chart.series[0].points == "0.0,0.0 100.0,50.0"
    assert shape.chart([]).series == []
