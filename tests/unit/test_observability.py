"""Unit tests for batchq.observability: Prometheus metrics (worker and API side) and JSON logs."""

from __future__ import annotations

import io
import logging
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import orjson
import pytest
import redis
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from batchq.observability import logs, metrics
from batchq.storage import keys

# --- a tiny in-memory stand-in for the few Redis calls the collector makes ------------------------


class StandInPipeline:
    def __init__(self, owner: StandInRedis) -> None:
        self.owner = owner
        self.calls: list[Callable[[], Any]] = []

    def smembers(self, name: str) -> None:
        self.calls.append(lambda: set(self.owner.data.get(name, set())))

    def hget(self, name: str, key: str) -> None:
        self.calls.append(lambda: self.owner.data.get(name, {}).get(key.encode()))

    def hgetall(self, name: str) -> None:
        self.calls.append(lambda: dict(self.owner.data.get(name, {})))

    def llen(self, name: str) -> None:
        self.calls.append(lambda: len(self.owner.data.get(name, [])))

    def hlen(self, name: str) -> None:
        self.calls.append(lambda: len(self.owner.data.get(name, {})))

    def zcount(self, name: str, low: float | str, high: float | str) -> None:
        lo, hi = float(low), float(high)
        self.calls.append(lambda: sum(lo <= s <= hi for s in self.owner.data.get(name, {}).values()))

    def get(self, name: str) -> None:
        self.calls.append(lambda: self.owner.data.get(name))

    def execute(self) -> list[Any]:
        self.owner.round_trips += 1
        if self.owner.error is not None:
            raise self.owner.error
        return [call() for call in self.calls]


class StandInRedis:
    def __init__(self, data: dict[str, Any] | None = None, error: Exception | None = None) -> None:
        self.data = data or {}
        self.error = error
        self.round_trips = 0

    def pipeline(self, transaction: bool = True) -> StandInPipeline:
        return StandInPipeline(self)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


def scrape(client: StandInRedis, routes: tuple[str, ...] = ("default",)) -> tuple[str, str]:
    body, content_type = metrics.render_api_metrics(metrics.api_registry(client, routes))
    return body.decode(), content_type


def batch_hash(status: str, account: str = "acct_a") -> dict[bytes, bytes]:
    return {b"status": status.encode(), b"total": b"10", b"account": account.encode()}


@pytest.fixture
def state() -> StandInRedis:
    now = time.time()
    return StandInRedis(
        {
            keys.ACTIVE_BATCHES: {b"batch_a", b"batch_b", b"batch_c", b"batch_gone"},
            keys.batch("batch_a"): batch_hash("in_progress"),
            keys.batch("batch_b"): batch_hash("in_progress", "acct_b"),
            keys.batch_pending("batch_a"): [b"t"] * 30,
            keys.batch_pending("batch_b"): [b"t"] * 4,
            keys.batch_leases("batch_b"): {b"0": b"1", b"1": b"1"},
            keys.SCHED_GRANTED: {b"acct_a": b"70", b"acct_b": b"12"},
            keys.TENANT_LINES: {b"acct_a": b"60", b"acct_b": b"9", b"acct_old": b"5"},
            keys.SCHED_WEIGHTS: {b"acct_b": b"3"},
            keys.batch("batch_c"): batch_hash("validating"),
            metrics.STATS_KEY: {
                b"lines_completed": b"10",
                b"lines_failed": b"2",
                b"batches_completed": b"3",
                b"batches_cancelled": b"1",
            },
            keys.LINE_QUEUE: [b"t"] * 5,
            keys.LINE_QUEUE + "\x06\x166": [b"t"] * 2,
            keys.CONTROL_QUEUE: [b"t"],
            keys.limit_inflight("default"): {b"a": now + 100, b"b": now + 100, b"dead": now - 10},
            keys.limit_notbefore("slow"): b"1700000000.5",
            keys.limit_health("slow"): {
                b"open_since": str(now - 30).encode(),
                b"opened_total": b"2",
                b"throttled": b"3",
                b"down": b"7",
            },
        }
    )


# --- API side --------------------------------------------------------------------------------------


def test_stats_field_names() -> None:
    assert metrics.STATS_KEY == "batchq:stats"
    assert metrics.STAT_FIELDS == (
        "lines_completed",
        "lines_failed",
        "batches_failed",
        "batches_completed",
        "batches_expired",
        "batches_cancelled",
    )
    assert metrics.stat_batches("expired") == "batches_expired"


def test_scrape_reports_redis_state(state: StandInRedis) -> None:
    text, content_type = scrape(state, ("default", "slow"))
    assert content_type == CONTENT_TYPE_LATEST
    assert "batchq_up 1.0" in text
    assert 'batchq_batches{status="in_progress"} 2.0' in text
    assert "batchq_lines_completed_total 10.0" in text
    assert 'batchq_queue_depth{queue="batchq.lines"} 7.0' in text
    assert 'batchq_queue_depth{queue="batchq.control"} 1.0' in text
    found = samples(text)
    expected_batches = {
        "validating": 1, "in_progress": 2, "finalizing": 0, "cancelling": 0,
        "completed": 3, "failed": 0, "expired": 0, "cancelled": 1,
    }  # fmt: skip
    for status, count in expected_batches.items():
        assert value(found, "batchq_batches", status=status) == count, status
    for status in ("completed", "failed", "expired", "cancelled"):
        assert value(found, "batchq_batches_finished_total", status=status) == expected_batches[status]
    assert value(found, "batchq_lines_completed_total") == 10
    assert value(found, "batchq_lines_failed_total") == 2
    assert value(found, "batchq_upstream_in_flight", route="default") == 2  # the dead worker's token is expired
    assert value(found, "batchq_upstream_in_flight", route="slow") == 0
    assert value(found, "batchq_upstream_throttled_until", route="default") == 0
    assert value(found, "batchq_upstream_throttled_until", route="slow") == 1700000000.5
    assert (
        value(found, "batchq_route_state", route="slow") == 1
        and value(found, "batchq_route_state", route="default") == 0
    )
    assert 29 <= value(found, "batchq_route_open_seconds", route="slow") <= 60
    assert value(found, "batchq_route_opened_total", route="slow") == 2
    assert value(found, "batchq_route_failed_attempts_total", route="slow", outcome="throttled") == 3
    assert value(found, "batchq_route_failed_attempts_total", route="slow", outcome="down") == 7
    assert value(found, "batchq_route_failed_attempts_total", route="default", outcome="error") == 0
    assert value(found, "batchq_tenant_lines_waiting", tenant="acct_a") == 30
    assert value(found, "batchq_tenant_lines_waiting", tenant="acct_b") == 4
    assert value(found, "batchq_tenant_lines_in_flight", tenant="acct_b") == 2
    assert value(found, "batchq_tenant_lines_stored_total", tenant="acct_old") == 5  # finished, still counted
    assert value(found, "batchq_tenant_lines_granted_total", tenant="acct_a") == 70
    assert value(found, "batchq_tenant_weight", tenant="acct_b") == 3
    assert value(found, "batchq_tenant_weight", tenant="acct_a") == 1
    assert value(found, "batchq_lines_waiting") == 34
    assert state.round_trips == 2


def test_scrape_of_empty_redis_reports_zeros() -> None:
    found = samples(scrape(StandInRedis())[0])
    assert value(found, "batchq_up") == 1
    assert value(found, "batchq_batches", status="in_progress") == 0
    assert value(found, "batchq_lines_failed_total") == 0
    assert value(found, "batchq_queue_depth", queue="batchq.lines") == 0
    assert value(found, "batchq_lines_waiting") == 0
    assert value(found, "batchq_upstream_in_flight", route="default") == 0


def test_active_statuses_are_read_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "STATUS_CHUNK", 2)
    ids = [f"batch_{i}" for i in range(5)]
    data: dict[str, Any] = {keys.ACTIVE_BATCHES: {i.encode() for i in ids}}
    data |= {keys.batch(i): batch_hash("finalizing") for i in ids}
    client = StandInRedis(data)
    found = samples(scrape(client, ())[0])
    assert value(found, "batchq_batches", status="finalizing") == 5
    assert client.round_trips == 1 + 3


def test_redis_error_yields_up_zero(caplog: pytest.LogCaptureFixture) -> None:
    text, _ = scrape(StandInRedis(error=redis.ConnectionError("connection refused")))
    found = samples(text)
    assert found == {("batchq_up", frozenset()): 0.0}
    assert "metrics scrape failed" in caplog.text


def test_malformed_numbers_count_as_zero() -> None:
    client = StandInRedis({metrics.STATS_KEY: {b"lines_failed": b"oops"}, keys.limit_notbefore("default"): b"x"})
    found = samples(scrape(client)[0])
    assert value(found, "batchq_lines_failed_total") == 0
    assert value(found, "batchq_upstream_throttled_until", route="default") == 0


# --- worker side -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_code", "outcome"),
    [
        (200, None, "ok"),
        (201, None, "ok"),
        (400, None, "http_error"),
        (500, None, "http_error"),
        (429, None, "throttled"),
        (None, "upstream_timeout", "timeout"),
        (None, "upstream_unreachable", "unreachable"),
        (None, None, "unreachable"),
    ],
)
def test_attempt_outcome(status: int | None, error_code: str | None, outcome: str) -> None:
    assert metrics.attempt_outcome(status, error_code) == outcome
    assert outcome in metrics.OUTCOMES


def test_worker_metrics_record_what_the_engine_reports() -> None:
    m = metrics.WorkerMetrics()
    get = m.registry.get_sample_value
    m.observe_attempt("default", "ok", 0.04)
    m.observe_attempt("default", "ok", 3.0)
    m.observe_attempt("default", "throttled", 0.2)
    m.retried("default")
    m.in_flight("default", 1)
    m.in_flight("default", 1)
    m.in_flight("default", -1)
    m.line_stored(True)
    m.line_stored(True)
    m.line_stored(False)
    ok = {"route": "default", "outcome": "ok"}
    assert get("batchq_upstream_request_seconds_count", ok) == 2
    assert get("batchq_upstream_request_seconds_sum", ok) == pytest.approx(3.04)
    assert get("batchq_upstream_request_seconds_bucket", ok | {"le": "0.05"}) == 1
    assert get("batchq_upstream_request_seconds_bucket", ok | {"le": "600.0"}) == 2
    assert get("batchq_upstream_request_seconds_count", {"route": "default", "outcome": "throttled"}) == 1
    assert get("batchq_upstream_throttled_total", {"route": "default"}) == 1
    assert get("batchq_upstream_retries_total", {"route": "default"}) == 1
    assert get("batchq_upstream_in_flight", {"route": "default"}) == 1
    assert get("batchq_lines_total", {"outcome": "completed"}) == 2
    assert get("batchq_lines_total", {"outcome": "failed"}) == 1


def test_worker_metrics_are_thread_safe() -> None:
    m = metrics.WorkerMetrics()

    def work() -> None:
        for _ in range(1000):
            m.observe_attempt("r", "ok", 0.1)
            m.in_flight("r", 1)
            m.in_flight("r", -1)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert m.registry.get_sample_value("batchq_upstream_request_seconds_count", {"route": "r", "outcome": "ok"}) == 8000
    assert m.registry.get_sample_value("batchq_upstream_in_flight", {"route": "r"}) == 0


def test_worker_registries_are_separate() -> None:
    a, b = metrics.WorkerMetrics(), metrics.WorkerMetrics()
    a.line_stored(True)
    assert b.registry.get_sample_value("batchq_lines_total", {"outcome": "completed"}) == 0
    assert metrics.worker_metrics() is metrics.worker_metrics()


def test_null_metrics_do_nothing() -> None:
    null: metrics.EngineMetrics = metrics.NULL
    null.observe_attempt("r", "ok", 1.0)
    null.retried("r")
    null.in_flight("r", 1)
    null.line_stored(False)
    assert not vars(metrics.NULL)


@pytest.fixture
def servers() -> Iterator[None]:
    yield
    metrics.stop_worker_metrics_servers()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.usefixtures("servers")
def test_port_zero_starts_nothing() -> None:
    before = threading.active_count()
    metrics.start_worker_metrics_server(0)
    assert metrics.running_metrics_ports() == []
    assert threading.active_count() == before


@pytest.mark.usefixtures("servers")
def test_worker_metrics_server_serves_its_registry() -> None:
    m = metrics.WorkerMetrics()
    m.line_stored(True)
    port = free_port()
    metrics.start_worker_metrics_server(port, addr="127.0.0.1", metrics=m)
    metrics.start_worker_metrics_server(port, addr="127.0.0.1", metrics=m)  # a no-op
    assert metrics.running_metrics_ports() == [port]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert 'batchq_lines_total{outcome="completed"} 1.0' in text
    metrics.stop_worker_metrics_servers()
    assert metrics.running_metrics_ports() == []


@pytest.mark.usefixtures("servers")
def test_taken_port_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        metrics.start_worker_metrics_server(port, addr="127.0.0.1", metrics=metrics.WorkerMetrics())
    assert metrics.running_metrics_ports() == []
    assert "metrics server not started" in caplog.text


# --- logs ------------------------------------------------------------------------------------------


def render(record: logging.LogRecord) -> dict[str, Any]:
    line = logs.JsonFormatter().format(record)
    assert "\n" not in line
    parsed: dict[str, Any] = orjson.loads(line)
    return parsed


def emit(fn: Callable[[logging.Logger], None]) -> list[dict[str, Any]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("batchq.test.json")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    try:
        fn(logger)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_json_line_has_base_fields_and_extra() -> None:
    extra = {"batch_id": "batch_1", "line": 7, "custom_id": "req-7", "owner": "k1", "ratio": 0.5, "tags": ["a"]}
    [entry] = emit(lambda log: log.info("stored %s of %d", "line", 7, extra=extra))
    assert entry["level"] == "INFO"
    assert entry["logger"] == "batchq.test.json"
    assert entry["message"] == "stored line of 7"
    assert entry["ts"].endswith("Z")
    assert abs(datetime.fromisoformat(entry["ts"]).timestamp() - time.time()) < 60
    assert {k: entry[k] for k in extra} == extra
    assert set(entry) == {"ts", "level", "logger", "message", *extra}  # no standard LogRecord noise


def test_json_exc_and_stack() -> None:
    def fail(log: logging.Logger) -> None:
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            log.exception("sweep failed", extra={"batch_id": "b"})
        log.warning("here", stack_info=True)

    failed, here = emit(fail)
    assert failed["level"] == "ERROR"
    assert failed["batch_id"] == "b"
    assert failed["exc"].startswith("Traceback")
    assert "ZeroDivisionError: division by zero" in failed["exc"]
    assert "exc_info" not in failed
    assert here["stack"].startswith("Stack (most recent call last)")
    assert "exc" not in here


def test_json_renders_odd_values() -> None:
    class Opaque:
        def __str__(self) -> str:
            return "opaque!"

    record = logging.makeLogRecord({"msg": "m", "obj": Opaque(), "raw": b"\x00", "by_int": {1: "x"}})
    entry = render(record)
    assert entry["obj"] == "opaque!"
    assert entry["raw"] == "b'\\x00'"
    assert entry["by_int"] == {"1": "x"}
    huge = render(logging.makeLogRecord({"msg": "m", "big": 2**70}))
    assert huge["big"] == str(2**70)
    assert huge["message"] == "m"


def test_extra_cannot_overwrite_base_fields() -> None:
    fields = {"name": "batchq.x", "levelname": "INFO", "msg": "real", "level": "fake", "logger": "fake", "ts": "fake"}
    record = logging.makeLogRecord(fields)
    entry = render(record)
    assert entry["logger"] == "batchq.x"
    assert entry["level"] == "INFO"
    assert entry["ts"] != "fake"


@pytest.fixture
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    noisy = {name: logging.getLogger(name).level for name in logs.NOISY}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lvl in noisy.items():
        logging.getLogger(name).setLevel(lvl)


def ours() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if h.get_name() == logs.HANDLER_NAME]


@pytest.mark.usefixtures("root_logging")
def test_configure_logging_is_idempotent() -> None:
    stream = io.StringIO()
    logs.configure_logging("debug", stream=stream)
    logs.configure_logging("DEBUG", stream=stream)
    assert len(ours()) == 1
    assert logging.getLogger().level == logging.DEBUG
    for name in logs.NOISY:
        assert logging.getLogger(name).level == logging.WARNING
    logging.getLogger("batchq.test.configure").debug("once", extra={"batch_id": "b"})
    [line] = stream.getvalue().splitlines()
    assert orjson.loads(line)["batch_id"] == "b"


@pytest.mark.usefixtures("root_logging")
def test_configure_logging_plain_text() -> None:
    stream = io.StringIO()
    logs.configure_logging("INFO", stream=stream)
    logs.configure_logging("WARNING", json=False, stream=stream)
    assert len(ours()) == 1
    logging.getLogger("batchq.test.plain").info("dropped")
    logging.getLogger("batchq.test.plain").warning("kept")
    assert stream.getvalue().rstrip().endswith("WARNING batchq.test.plain kept")
    assert "dropped" not in stream.getvalue()


def test_redact_keeps_only_safe_keys() -> None:
    request = {"custom_id": "r1", "batch_id": "b", "body": {"messages": ["secret"]}, "headers": {"a": "b"}}
    assert logs.redact(request) == {"custom_id": "r1", "batch_id": "b"}
    assert logs.redact({"x": 1, "y": 2}, allowed=("y",)) == {"y": 2}
    assert logs.redact({}) == {}
    assert set(logs.SAFE_FIELDS) >= {"batch_id", "line", "custom_id", "owner", "status_code", "route"}
