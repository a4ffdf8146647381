"""Mock OpenAI-compatible upstream used by tests, the demo and benchmarks.

A single aiohttp event loop serves ``/v1/chat/completions``, ``/v1/completions``,
``/v1/embeddings`` and ``/v1/responses`` (each also without the ``/v1`` prefix)
with cheap, deterministic answers.  Behaviour is tuned globally by
:class:`MockConfig` (latency, jitter, injected 429/500, a concurrency cap) and
per request by a ``"mock"`` object in the JSON body::

    {"mock": {"status": 429, "fail_times": 2, "retry_after": 0.1}}
    {"mock": {"latency_ms": 250}}
    {"mock": {"close": true}}

Two models of real upstreams: a continuous-batching engine (``engine_k``: every decode step of the
batch gets slower as it grows, yet serves more) and a gateway's fixed-window rate limit
(``window_limit``: 429 at once, without Retry-After, until the window turns).

``GET /_stats`` reports counters (including how many 2xx answers repeated a body
that had already succeeded: the double-execution detector) and ``POST /_reset``
clears them.

Run standalone: ``python -m batchq.local.mock_upstream --port 9000 --latency-ms 50``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import orjson
from aiohttp import web

__all__ = ["MockConfig", "build_app", "main", "run"]

JSON = dict[str, Any]
Builder = Callable[[JSON], JSON]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_DIGEST_SIZE = 16
_ECHO_CHARS = 200
_CLIENT_MAX_SIZE = 64 * 1024 * 1024
_BACKLOG = 2048


@dataclass(frozen=True)
class MockConfig:
    """Global behaviour of the mock upstream (all fractions are in [0, 1])."""

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    fail_429: float = 0.0
    retry_after_s: float = 1.0
    fail_500: float = 0.0
    slow_fraction: float = 0.0
    slow_ms: float = 0.0
    max_concurrency: int = 0
    serve_slots: int = 0  # like vLLM: at most this many served at once, the rest queue (never a 429); 0: off
    # A continuous-batching engine (vLLM, SGLang, TGI) when engine_k > 0: a request is engine_steps
    # decode steps; one step of the whole batch takes engine_step_ms x (1 + n / engine_k) with n in
    # service (at most engine_max; the rest wait). Slower per request as the batch grows, yet more
    # requests served per second. It replaces latency_ms.
    engine_k: int = 0
    engine_steps: int = 50
    engine_step_ms: float = 4.0
    engine_max: int = 256
    # A gateway's rate limit (LiteLLM's rpm, for one) when window_limit > 0: at most this many
    # requests per fixed window of window_s seconds; over it, a 429 at once without Retry-After.
    window_limit: int = 0
    window_s: float = 60.0
    seed: int | None = None


# --------------------------------------------------------------------------- #
# Responses
# --------------------------------------------------------------------------- #


def _hex(nbytes: int = 12) -> str:
    return os.urandom(nbytes).hex()


def _error_type(status: int) -> tuple[str, str | None]:
    if status == 429:
        return "requests", "rate_limit_exceeded"
    if status >= 500:
        return "server_error", None
    return {401: "authentication_error", 403: "permission_error"}.get(status, "invalid_request_error"), None


def _json_response(payload: JSON, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(payload),
        status=status,
        content_type="application/json",
        headers={"x-request-id": "req_" + _hex(16)},
    )


def _error(status: int, message: str, retry_after: object = None) -> web.Response:
    err_type, code = _error_type(status)
    envelope = {"message": message, "type": err_type, "param": None, "code": code}
    response = _json_response({"error": envelope}, status)
    if isinstance(retry_after, (int, float)) and not isinstance(retry_after, bool):
        response.headers["Retry-After"] = f"{float(retry_after):g}"
    return response


# --------------------------------------------------------------------------- #
# Payload builders (cheap, deterministic content)
# --------------------------------------------------------------------------- #


def _text_of(content: object) -> str:
    """Text of a message ``content``: a string or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = (p.get("text") for p in content if isinstance(p, dict))
        return " ".join(t for t in parts if isinstance(t, str))
    return ""


def _messages(value: object) -> list[JSON]:
    return [m for m in value if isinstance(m, dict)] if isinstance(value, list) else []


def _last_user_text(messages: list[JSON]) -> str:
    for message in reversed(messages):
        if message.get("role", "user") == "user":
            return _text_of(message.get("content"))
    return ""


def _words(text: str) -> int:
    return len(text.split())


def _prompt_words(messages: list[JSON]) -> int:
    return max(1, sum(_words(_text_of(m.get("content"))) for m in messages))


def _echo(text: str) -> str:
    return "echo: " + text[:_ECHO_CHARS]


def _usage(prompt: int, completion: int) -> JSON:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _model(body: JSON) -> Any:
    return body.get("model", "mock-model")


def _chat_completion(body: JSON) -> JSON:
    messages = _messages(body.get("messages"))
    text = _echo(_last_user_text(messages))
    message = {"role": "assistant", "content": text, "refusal": None}
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
    return {
        "id": "chatcmpl-" + _hex(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": _model(body),
        "choices": [choice],
        "usage": _usage(_prompt_words(messages), _words(text)),
    }


def _strings(value: object) -> list[str]:
    """``input``/``prompt`` as a list of strings (token arrays are stringified)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v if isinstance(v, str) else str(v) for v in value]
    return [""]


def _completion(body: JSON) -> JSON:
    prompts = _strings(body.get("prompt"))
    text = _echo(prompts[0] if prompts else "")
    choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": "stop"}
    prompt_words = max(1, sum(_words(p) for p in prompts))
    return {
        "id": "cmpl-" + _hex(),
        "object": "text_completion",
        "created": int(time.time()),
        "model": _model(body),
        "choices": [choice],
        "usage": _usage(prompt_words, _words(text)),
    }


def _vector(text: str) -> list[float]:
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return [round(b / 127.5 - 1.0, 6) for b in digest]


def _embeddings(body: JSON) -> JSON:
    inputs = _strings(body.get("input"))
    data = [{"object": "embedding", "index": i, "embedding": _vector(s)} for i, s in enumerate(inputs)]
    tokens = max(1, sum(_words(s) for s in inputs))
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return {"object": "list", "data": data, "model": _model(body), "usage": usage}


def _responses_input_text(value: object) -> str:
    return value if isinstance(value, str) else _last_user_text(_messages(value))


def _response_message(text: str) -> JSON:
    content = [{"type": "output_text", "text": text, "annotations": []}]
    return {
        "type": "message",
        "id": "msg_" + _hex(),
        "status": "completed",
        "role": "assistant",
        "content": content,
    }


def _response(body: JSON) -> JSON:
    raw_input = body.get("input")
    text = _echo(_responses_input_text(raw_input))
    in_tokens = max(1, sum(_words(s) for s in _strings(raw_input)))
    usage = _usage(in_tokens, _words(text))
    return {
        "id": "resp_" + _hex(),
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "model": _model(body),
        "output": [_response_message(text)],
        "output_text": text,
        "usage": {
            "input_tokens": usage["prompt_tokens"],
            "output_tokens": usage["completion_tokens"],
            "total_tokens": usage["total_tokens"],
        },
    }


_ENDPOINTS: dict[str, Builder] = {
    "chat/completions": _chat_completion,
    "completions": _completion,
    "embeddings": _embeddings,
    "responses": _response,
}


# --------------------------------------------------------------------------- #
# State
# --------------------------------------------------------------------------- #


@dataclass
class _Stats:
    requests: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    closed: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    success_digests: set[bytes] = field(default_factory=set)
    duplicate_successes: int = 0
    fail_counts: dict[bytes, int] = field(default_factory=dict)

    def as_json(self) -> JSON:
        return {
            "requests": self.requests,
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "closed": self.closed,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "success_bodies": len(self.success_digests),
            "duplicate_successes": self.duplicate_successes,
        }


class _Engine:
    """Continuous batching on the server's loop: every step serves the whole batch one step."""

    def __init__(self, config: MockConfig) -> None:
        self.config = config
        self.waiting: list[asyncio.Future[None]] = []
        self.serving: list[tuple[asyncio.Future[None], list[int]]] = []  # [steps left]
        self.running = False
        self.peak = 0

    async def run(self) -> None:
        """Wait until a request's steps are done."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting.append(done)
        if not self.running:
            self.running = True
            asyncio.get_running_loop().create_task(self._steps())
        await done

    async def _steps(self) -> None:
        cfg, loop = self.config, asyncio.get_running_loop()
        at = loop.time()
        try:
            while self.serving or self.waiting:
                while self.waiting and len(self.serving) < cfg.engine_max:
                    self.serving.append((self.waiting.pop(0), [cfg.engine_steps]))
                self.peak = max(self.peak, len(self.serving))
                at += cfg.engine_step_ms / 1000 * (1 + len(self.serving) / cfg.engine_k)
                await asyncio.sleep(max(0.0, at - loop.time()))  # on a clock of its own: no drift from late wakeups
                at = max(at, loop.time() - 0.05)  # but a stalled loop does not owe a burst of steps
                self.serving = [(f, left) for f, left in self.serving if not _stepped(f, left)]
        finally:
            self.running = False


def _stepped(done: asyncio.Future[None], left: list[int]) -> bool:
    """One step of a request; True (and its future resolved) when it was its last."""
    left[0] -= 1
    if left[0] > 0 and not done.cancelled():
        return False
    if not done.done():
        done.set_result(None)
    return True


class _Window:
    """A fixed-window rate limit: at most ``limit`` requests per ``seconds``, the first window
    beginning with the first request."""

    def __init__(self, limit: int, seconds: float) -> None:
        self.limit, self.seconds = limit, seconds
        self.start: float | None = None
        self.current, self.count = -1, 0

    def admits(self, now: float) -> bool:
        self.start = now if self.start is None else self.start
        window = int((now - self.start) // self.seconds)
        if window != self.current:
            self.current, self.count = window, 0
        if self.count >= self.limit:
            return False
        self.count += 1
        return True


class _Mock:
    """Config, RNG and counters of one app (single event loop: no locking)."""

    def __init__(self, config: MockConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.stats = _Stats()
        self._slots: asyncio.Semaphore | None = None
        self.engine = _Engine(config) if config.engine_k > 0 else None
        self.window = _Window(config.window_limit, config.window_s) if config.window_limit > 0 else None

    @property
    def slots(self) -> asyncio.Semaphore | None:
        """The served-at-once slots (created in the server's loop), or None when requests never queue."""
        if self.config.serve_slots > 0 and self._slots is None:
            self._slots = asyncio.Semaphore(self.config.serve_slots)
        return self._slots

    def reset(self) -> None:
        # Requests still in flight keep being counted so ``in_flight`` stays exact.
        live = self.stats.in_flight
        self.stats = _Stats(in_flight=live, peak_in_flight=live)
        if self.engine is not None:
            self.engine.peak = len(self.engine.serving)

    def saturated(self) -> bool:
        limit = self.config.max_concurrency
        return limit > 0 and self.stats.in_flight >= limit

    def enter(self) -> None:
        stats = self.stats
        stats.in_flight += 1
        stats.peak_in_flight = max(stats.peak_in_flight, stats.in_flight)

    def leave(self) -> None:
        self.stats.in_flight -= 1

    def finish(self, response: web.Response, raw: bytes | None = None) -> web.Response:
        stats = self.stats
        stats.by_status[response.status] = stats.by_status.get(response.status, 0) + 1
        if raw is not None and 200 <= response.status < 300:
            digest = hashlib.blake2b(raw, digest_size=_DIGEST_SIZE).digest()
            if digest in stats.success_digests:
                stats.duplicate_successes += 1
            else:
                stats.success_digests.add(digest)
        return response

    def delay_s(self, directive: JSON) -> float:
        cfg = self.config
        override = directive.get("latency_ms")
        if isinstance(override, (int, float)) and not isinstance(override, bool):
            return float(override) / 1000.0
        slow = cfg.slow_fraction > 0 and self.rng.random() < cfg.slow_fraction
        ms = cfg.slow_ms if slow else cfg.latency_ms
        if cfg.jitter_ms > 0:
            ms += self.rng.uniform(0.0, cfg.jitter_ms)
        return ms / 1000.0

    def failure(self, body: JSON, directive: JSON) -> web.Response | None:
        status = directive.get("status")
        if isinstance(status, int) and status >= 300 and self._directed(body, directive):
            retry = directive.get("retry_after") if status == 429 else None
            return _error(status, f"mock: injected status {status}", retry)
        return self._random_failure()

    def _directed(self, body: JSON, directive: JSON) -> bool:
        """Whether a ``mock.status`` directive applies to this request."""
        times = directive.get("fail_times")
        if not isinstance(times, int):
            return True
        canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
        key = hashlib.blake2b(canonical, digest_size=_DIGEST_SIZE).digest()
        seen = self.stats.fail_counts.get(key, 0)
        if seen >= times:
            return False
        self.stats.fail_counts[key] = seen + 1
        return True

    def _random_failure(self) -> web.Response | None:
        cfg = self.config
        if cfg.fail_429 <= 0 and cfg.fail_500 <= 0:
            return None
        draw = self.rng.random()
        if draw < cfg.fail_429:
            return _error(429, "mock: rate limit reached", cfg.retry_after_s)
        if draw < cfg.fail_429 + cfg.fail_500:
            return _error(500, "mock: internal server error")
        return None


_MOCK_KEY = web.AppKey("batchq_mock", _Mock)


# --------------------------------------------------------------------------- #
# Handlers
# --------------------------------------------------------------------------- #


def _parse(raw: bytes) -> JSON | None:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) else None


def _directive(body: JSON | None) -> JSON:
    directive = body.get("mock") if body is not None else None
    return directive if isinstance(directive, dict) else {}


def _abort(request: web.Request, mock: _Mock) -> web.Response:
    """Drop the connection without answering (client sees a disconnect)."""
    mock.stats.closed += 1
    if request.transport is not None:
        request.transport.abort()
    return web.Response(status=499)


async def _serve(request: web.Request, mock: _Mock, builder: Builder) -> web.Response:
    raw = await request.read()
    body = _parse(raw)
    directive = _directive(body)
    delay = mock.delay_s(directive)
    if mock.engine is not None:
        await mock.engine.run()
    elif delay > 0:
        await asyncio.sleep(delay)
    if body is None:
        message = "We could not parse the JSON body of your request."
        return mock.finish(_error(400, message))
    if directive.get("close") is True:
        return _abort(request, mock)
    failure = mock.failure(body, directive)
    if failure is not None:
        return mock.finish(failure)
    return mock.finish(_json_response(builder(body)), raw)


def _api_handler(builder: Builder) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        mock = request.app[_MOCK_KEY]
        mock.stats.requests += 1
        if mock.window is not None and not mock.window.admits(time.time()):
            return mock.finish(_error(429, "mock: rate limit for this window reached"))  # no Retry-After
        if mock.saturated():
            return mock.finish(_error(429, "mock: too many concurrent requests", 1))
        mock.enter()
        try:
            slots = mock.slots
            if slots is None:
                return await _serve(request, mock, builder)
            async with slots:  # queued, as a busy vLLM queues: latency grows, no 429
                return await _serve(request, mock, builder)
        finally:
            mock.leave()

    return handler


async def _not_found(request: web.Request) -> web.StreamResponse:
    mock = request.app[_MOCK_KEY]
    mock.stats.requests += 1
    message = f"Invalid URL ({request.method} {request.path})"
    return mock.finish(_error(404, message))


async def _stats(request: web.Request) -> web.StreamResponse:
    mock = request.app[_MOCK_KEY]
    stats = mock.stats.as_json()
    if mock.engine is not None:
        stats["engine_peak_batch"] = mock.engine.peak
    return _json_response(stats)


async def _reset(request: web.Request) -> web.StreamResponse:
    request.app[_MOCK_KEY].reset()
    return _json_response({"reset": True})


def build_app(config: MockConfig) -> web.Application:
    """The mock upstream as an aiohttp application (state lives on the app)."""
    app = web.Application(client_max_size=_CLIENT_MAX_SIZE)
    app[_MOCK_KEY] = _Mock(config)
    for path, builder in _ENDPOINTS.items():
        handler = _api_handler(builder)
        app.router.add_post(f"/v1/{path}", handler)
        app.router.add_post(f"/{path}", handler)
    app.router.add_get("/_stats", _stats)
    app.router.add_post("/_reset", _reset)
    app.router.add_route("*", "/{tail:.*}", _not_found)
    return app


# --------------------------------------------------------------------------- #
# Serving
# --------------------------------------------------------------------------- #


def _stop_event() -> asyncio.Event:
    """An event set on SIGTERM/SIGINT (installed before we announce readiness)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _serve_forever(host: str, port: int, config: MockConfig) -> None:
    stop = _stop_event()
    runner = web.AppRunner(build_app(config), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=_BACKLOG, reuse_port=False)
        await site.start()
        bound = runner.addresses[0][1] if runner.addresses else port
        sys.stdout.write(f"mock upstream listening on http://{host}:{bound}\n")
        sys.stdout.flush()
        await stop.wait()
    finally:
        await runner.cleanup()


def run(host: str, port: int, config: MockConfig) -> None:
    """Serve until SIGTERM/SIGINT (blocking). ``port=0`` picks a free port."""
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_serve_forever(host, port, config))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when available (noticeably less CPU per request), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Mock OpenAI-compatible upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    for f in fields(MockConfig):
        kind = int if "int" in str(f.type) else float
        flag = "--" + f.name.replace("_", "-")
        parser.add_argument(flag, type=kind, default=f.default)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse_args(argv)
    config = MockConfig(**{f.name: getattr(args, f.name) for f in fields(MockConfig)})
    run(args.host, args.port, config)


if __name__ == "__main__":
    main()
