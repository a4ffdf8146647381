"""Unit tests for batchq.execution.upstream (URL joining and the retrying HTTP client)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx2
import orjson
import pytest

from batchq.config import Settings
from batchq.domain.health import RouteDown, RouteState
from batchq.domain.routing import Release, Route
from batchq.execution.upstream import NoLimiter, Outcome, Upstream, join_url

Handler = Callable[[httpx2.Request], httpx2.Response]
PATH = "/v1/chat/completions"
PAYLOAD = orjson.dumps({"model": "m", "messages": []})


@pytest.mark.parametrize(
    ("base", "path", "expected"),
    [
        ("http://up:9000", PATH, "http://up:9000/v1/chat/completions"),
        ("http://up:9000/", PATH, "http://up:9000/v1/chat/completions"),
        ("http://up:9000/v1", PATH, "http://up:9000/v1/chat/completions"),
        ("http://up:9000/v1/", PATH, "http://up:9000/v1/chat/completions"),
        ("http://up:9000/v1//", PATH, "http://up:9000/v1/chat/completions"),
        ("http://up/openai/v1", "/v1/embeddings", "http://up/openai/v1/embeddings"),
        ("http://up/openai", "/v1/embeddings", "http://up/openai/v1/embeddings"),
        ("http://up/v1", "/v1", "http://up/v1"),
        ("http://up/v1", "/v10/x", "http://up/v1/v10/x"),
        ("http://up/v2", PATH, "http://up/v2/v1/chat/completions"),
    ],
)
def test_join_url(base: str, path: str, expected: str) -> None:
    assert join_url(base, path) == expected


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "upstream_url": "http://upstream.test/v1",
        "upstream_backoff_base_s": 0,
        "upstream_backoff_max_s": 0,
        "upstream_max_attempts": 3,
        "upstream_max_retry_time_s": 60,
        "api_keys": [],
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


class Recorder:
    """A MockTransport handler that replays scripted replies and records the requests."""

    def __init__(self, *replies: httpx2.Response | Exception) -> None:
        self.replies = list(replies)
        self.requests: list[httpx2.Request] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        reply = self.replies[min(len(self.requests), len(self.replies)) - 1]
        if isinstance(reply, Exception):
            raise reply
        return reply


def send(handler: Handler, **overrides: Any) -> Outcome:
    upstream = Upstream(settings(**overrides), transport=httpx2.MockTransport(handler))
    route = upstream.route(PATH, "m")
    assert route is not None
    try:
        outcome, done = upstream.send_on(route, PATH, PAYLOAD)
        upstream.limiter.release(done)
        return outcome
    finally:
        upstream.close()


def test_success_on_first_attempt_returns_body_and_request_id() -> None:
    handler = Recorder(httpx2.Response(200, json={"ok": True}, headers={"x-request-id": "req_9"}))
    outcome = send(handler)
    assert (outcome.status, outcome.body, outcome.request_id, outcome.attempts) == (200, {"ok": True}, "req_9", 1)
    assert outcome.error_code is None


def test_request_goes_to_the_joined_url_with_the_payload() -> None:
    handler = Recorder(httpx2.Response(200, json={}))
    send(handler)
    (request,) = handler.requests
    assert request.method == "POST"
    assert str(request.url) == "http://upstream.test/v1/chat/completions"
    assert request.content == PAYLOAD
    assert request.headers["content-type"] == "application/json"


def test_500_then_200_succeeds_after_two_attempts() -> None:
    handler = Recorder(httpx2.Response(500, json={"error": "boom"}), httpx2.Response(200, json={"ok": 1}))
    outcome = send(handler)
    assert (outcome.status, outcome.body, outcome.attempts) == (200, {"ok": 1}, 2)
    assert len(handler.requests) == 2


def test_400_is_not_retried() -> None:
    handler = Recorder(httpx2.Response(400, json={"error": "bad"}), httpx2.Response(200, json={}))
    outcome = send(handler)
    assert (outcome.status, outcome.body, outcome.attempts) == (400, {"error": "bad"}, 1)
    assert len(handler.requests) == 1


def test_429s_spend_no_attempt_however_many() -> None:
    handler = Recorder(*[httpx2.Response(429)] * 7, httpx2.Response(200, json={}))
    outcome = send(handler)  # three attempts allowed, seven 429s: they are waits, not failures
    assert (outcome.status, outcome.attempts, len(handler.requests)) == (200, 1, 8)


def test_a_429_for_spent_quota_is_an_error_that_spends_attempts() -> None:
    quota = {"error": {"message": "You exceeded your current quota", "code": "insufficient_quota"}}
    handler = Recorder(httpx2.Response(429, json=quota))
    outcome = send(handler)
    assert (outcome.status, outcome.attempts) == (429, 3)


def test_429s_end_the_line_once_its_batch_has_expired() -> None:
    upstream = Upstream(settings(), transport=httpx2.MockTransport(Recorder(httpx2.Response(429))))
    route = upstream.route(PATH, "m")
    assert route is not None
    try:
        outcome, done = upstream.send_on(route, PATH, PAYLOAD, deadline=time.time() - 1)
    finally:
        upstream.close()
    assert (outcome.status, outcome.attempts, done.outcome) == (429, 1, "throttled")


def test_persistent_503_returns_the_last_response_after_max_attempts() -> None:
    handler = Recorder(httpx2.Response(503, text="overloaded"))
    outcome = send(handler)
    assert (outcome.status, outcome.body, outcome.attempts) == (503, "overloaded", 3)
    assert outcome.error_code is None
    assert len(handler.requests) == 3


def test_connection_error_gives_upstream_unreachable_after_max_attempts() -> None:
    handler = Recorder(httpx2.ConnectError("connection refused"))
    outcome = send(handler)
    assert outcome.status is None
    assert outcome.error_code == "upstream_unreachable"
    assert outcome.error_message and "ConnectError" in outcome.error_message
    assert outcome.attempts == 3
    assert len(handler.requests) == 3


def test_timeout_gives_upstream_timeout() -> None:
    handler = Recorder(httpx2.ReadTimeout("read timed out"))
    outcome = send(handler)
    assert (outcome.status, outcome.error_code, outcome.attempts) == (None, "upstream_timeout", 3)


def test_connect_timeout_is_a_timeout_not_unreachable() -> None:
    outcome = send(Recorder(httpx2.ConnectTimeout("slow")))
    assert outcome.error_code == "upstream_timeout"


def test_connection_error_then_success_recovers() -> None:
    handler = Recorder(httpx2.ConnectError("refused"), httpx2.Response(200, json={"ok": True}))
    outcome = send(handler)
    assert (outcome.status, outcome.error_code, outcome.attempts) == (200, None, 2)


def test_single_attempt_setting_never_retries() -> None:
    handler = Recorder(httpx2.Response(500))
    outcome = send(handler, upstream_max_attempts=1)
    assert (outcome.status, outcome.attempts) == (500, 1)


def test_retry_after_beyond_the_total_time_budget_stops_retrying() -> None:
    handler = Recorder(httpx2.Response(500, headers={"Retry-After": "30"}), httpx2.Response(200))
    outcome = send(handler, upstream_backoff_max_s=60, upstream_max_retry_time_s=10)
    assert (outcome.status, outcome.attempts) == (500, 1)


def test_authorization_header_sent_when_upstream_api_key_is_set() -> None:
    handler = Recorder(httpx2.Response(200, json={}))
    send(handler, upstream_api_key="sk-up")
    assert handler.requests[0].headers["authorization"] == "Bearer sk-up"


def test_no_authorization_header_without_upstream_api_key() -> None:
    handler = Recorder(httpx2.Response(200, json={}))
    send(handler)
    assert "authorization" not in handler.requests[0].headers


def test_request_id_header_fallback() -> None:
    outcome = send(Recorder(httpx2.Response(200, json={}, headers={"request-id": "r2"})))
    assert outcome.request_id == "r2"


def test_non_json_body_is_kept_as_text() -> None:
    outcome = send(Recorder(httpx2.Response(404, content=b"not found \xff")))
    assert outcome.status == 404
    assert outcome.body == "not found \ufffd"


class RecordingLimiter(NoLimiter):
    """Hands out numbered tokens and records every slot given back."""

    def __init__(self, open_for: int = 0, down_after: int | None = None) -> None:
        self.acquired = 0
        self.released: list[Release] = []
        self.open_for = open_for  # this many down outcomes find the route's breaker open
        self.down_after = down_after  # acquire raises RouteDown after this many grants

    def acquire(
        self, route: Route, deadline: float | None = None, keepalive: Any = None, may_defer: bool = True
    ) -> str | None:
        if self.down_after is not None and self.acquired >= self.down_after:
            raise RouteDown(route.name, 1800)
        self.acquired += 1
        return f"t{self.acquired}"

    def release(self, done: Release) -> RouteState:
        self.released.append(done)
        if done.outcome == "down" and self.open_for > 0:
            self.open_for -= 1
            return RouteState.OPEN
        return RouteState.CLOSED


def limited(
    handler: Handler, limiter: RecordingLimiter | None = None, **overrides: Any
) -> tuple[Upstream, RecordingLimiter, Route]:
    limiter = limiter or RecordingLimiter()
    upstream = Upstream(settings(**overrides), limiter, transport=httpx2.MockTransport(handler))
    route = upstream.route(PATH, "m")
    assert route is not None
    return upstream, limiter, route


def test_send_on_uses_the_held_slot_first_and_leaves_the_last_one_to_the_caller() -> None:
    upstream, limiter, route = limited(Recorder(httpx2.Response(500), httpx2.Response(200, json={})))
    try:
        outcome, done = upstream.send_on(route, PATH, PAYLOAD, held="held")
    finally:
        upstream.close()
    assert (outcome.status, outcome.attempts) == (200, 2)
    assert limiter.acquired == 1  # only the retry asked for a slot
    assert [(r.token, r.outcome) for r in limiter.released] == [("held", "error")]
    assert (done.token, done.outcome) == ("t1", "ok")


def test_a_throttled_last_attempt_carries_its_retry_after_to_the_caller() -> None:
    throttled = httpx2.Response(429, headers={"Retry-After": "30"})
    upstream, limiter, route = limited(Recorder(throttled), upstream_max_attempts=1)
    try:
        outcome, done = upstream.send_on(route, PATH, PAYLOAD, deadline=time.time() - 1)
    finally:
        upstream.close()
    assert outcome.status == 429 and outcome.attempts == 1
    assert (done.outcome, done.retry_after, limiter.released) == ("throttled", 30.0, [])


def test_429s_are_given_back_to_the_limiter_which_learns_from_them() -> None:
    reset = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1m30s"}
    handler = Recorder(httpx2.Response(429, headers=reset), httpx2.Response(429), httpx2.Response(200, json={}))
    upstream, limiter, route = limited(handler)
    try:
        outcome, _ = upstream.send_on(route, PATH, PAYLOAD)
    finally:
        upstream.close()
    assert (outcome.status, outcome.attempts) == (200, 1)
    assert [(r.outcome, r.retry_after) for r in limiter.released] == [("throttled", 90.0), ("throttled", None)]
    assert all(r.sent_at > 0 for r in limiter.released)


def test_an_attempt_that_raises_gives_its_slot_back() -> None:
    def explode(request: httpx2.Request) -> httpx2.Response:
        raise RuntimeError("bug in a transport")

    upstream, limiter, route = limited(explode)
    try:
        with pytest.raises(RuntimeError):
            upstream.send_on(route, PATH, PAYLOAD, held="held")
    finally:
        upstream.close()
    assert [(r.token, r.outcome) for r in limiter.released] == [("held", "error")]


def test_attempts_that_find_the_route_down_are_not_spent() -> None:
    responses = Recorder(httpx2.Response(503), httpx2.Response(502), httpx2.Response(503), httpx2.Response(200))
    upstream, limiter, route = limited(responses, RecordingLimiter(open_for=3), upstream_max_attempts=2)
    try:
        outcome, done = upstream.send_on(route, PATH, PAYLOAD)
    finally:
        upstream.close()
    assert (outcome.status, outcome.attempts) == (200, 1)  # three outage answers, then the first real one
    assert [r.outcome for r in limiter.released] == ["down", "down", "down"]
    assert done.outcome == "ok"


def test_down_answers_while_the_route_stays_up_count_as_attempts() -> None:
    upstream, limiter, route = limited(Recorder(httpx2.Response(503), httpx2.Response(503)), upstream_max_attempts=2)
    try:
        outcome, done = upstream.send_on(route, PATH, PAYLOAD)
    finally:
        upstream.close()
    assert (outcome.status, outcome.attempts) == (503, 2)
    assert (done.token, len(limiter.released)) == (None, 2)  # each counted once, none left to the caller


def test_a_line_gives_up_when_the_route_stays_down_too_long() -> None:
    limiter = RecordingLimiter(open_for=100, down_after=1)
    upstream, _, route = limited(Recorder(httpx2.Response(503)), limiter, upstream_max_attempts=5)
    try:
        outcome, done = upstream.send_on(route, PATH, PAYLOAD)
    finally:
        upstream.close()
    assert (outcome.status, outcome.error_code, outcome.attempts) == (None, "upstream_unreachable", 0)
    assert "unreachable for 1800 s" in (outcome.error_message or "")
    assert done.token is None


def test_a_route_with_an_engine_priority_sends_it_in_every_body_unless_the_line_has_its_own() -> None:
    route = Route(name="batch", url="http://vllm.test", engine_priority=10)
    assert orjson.loads(Upstream.payload(route, {"model": "m"})) == {"model": "m", "priority": 10}
    assert orjson.loads(Upstream.payload(route, {"model": "m", "priority": 0})) == {"model": "m", "priority": 0}
    plain = Route(name="plain", url="http://vllm.test")
    assert orjson.loads(Upstream.payload(plain, {"model": "m"})) == {"model": "m"}
