"""A distributed concurrency cap, rate limit, 429 back-off and circuit breaker per upstream route, in Redis.

All workers share, per route: a sorted set of in-flight request tokens (each with an expiry,
renewed by its worker's heartbeat — ``HeldSlots`` — so a dead worker's slots come back within a
line lease, and a ghost cannot hold the window), a "not before" time pushed forward by any 429 with Retry-After,
a GCRA rate limiter, an AIMD congestion window (halved at most once a second on 429s, grown by
1/window per success) that adapts the effective cap to what the upstream keeps up with, and the
route's health (``batchq.domain.health``): a breaker that stops every request while the upstream is
down, lets one probe out a second, and closes on the first answer.
"""

from __future__ import annotations

import logging
import random
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from batchq.domain import gradient, throughput
from batchq.domain.health import BreakerPolicy, Deferred, RouteDown, RouteState, gives_up
from batchq.domain.routing import Release, Route
from batchq.storage import clock, keys, scripts
from batchq.storage.lua import Call, Script

FREED_WAIT_S = 0.25  # the longest a waiter blocks before it checks the cap again
NAP_S = 5.0  # the longest one sleep while the route is held back: the line's lease is renewed between
log = logging.getLogger("batchq.limits")


class Keepalive:
    """Calls ``beat`` at most once per ``every`` seconds, however often it is called."""

    def __init__(self, beat: Callable[[], None], every: float) -> None:
        self.beat = beat
        self.every = every
        self._last = time.monotonic()

    def __call__(self) -> None:
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            self.beat()


class HeldSlots:
    """The upstream slots this process's threads hold, by route. The worker's heartbeat renews
    their expiry (``renew``); a slot given back or run out is not brought back (``ZADD XX``)."""

    def __init__(self) -> None:
        self._held: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def add(self, route: str, token: str) -> None:
        with self._lock:
            self._held.setdefault(route, set()).add(token)

    def discard(self, route: str, token: str) -> None:
        with self._lock:
            tokens = self._held.get(route)
            if tokens is not None:
                tokens.discard(token)

    def tokens(self) -> dict[str, list[str]]:
        with self._lock:
            return {route: list(tokens) for route, tokens in self._held.items() if tokens}

    def renew(self, client: redis.Redis, ttl_s: float) -> int:
        """Push the expiry of every slot held here to ``ttl_s`` from now; returns how many are held."""
        held = self.tokens()
        if not held:
            return 0
        until = clock.now() + ttl_s
        pipe = client.pipeline(transaction=False)
        for route, tokens in held.items():
            pipe.zadd(keys.limit_inflight(route), dict.fromkeys(tokens, until), xx=True)
        pipe.execute()
        return sum(len(tokens) for tokens in held.values())


@dataclass(frozen=True)
class Health:
    """A route's breaker after a release: its state, and whether this release changed it."""

    state: RouteState
    changed: bool = False

    @classmethod
    def parse(cls, reply: bytes | str | None) -> Health:
        text = reply.decode() if isinstance(reply, bytes) else (reply or "closed:")
        state, _, change = text.partition(":")
        return cls(RouteState(state or "closed"), bool(change))


class RedisLimiter:
    """Called from the worker's task threads with the process's (thread-safe) Redis client.

    Measured: the synchronous client costs about a third of ``redis.asyncio``'s CPU per call, and
    keeping these calls off the event loop keeps the loop's latency low for the HTTP traffic.
    """

    def __init__(
        self,
        client: redis.Redis,
        adaptive: bool,
        default_timeout_s: float,
        breaker: BreakerPolicy | None = None,
        mode: str = "throughput",
        tolerance: float = 1.05,
        slot_ttl_s: float | None = None,
        stopping: threading.Event | None = None,
        held: HeldSlots | None = None,
    ) -> None:
        """``slot_ttl_s``: how long a slot lives after its worker's last beat (``renew_held``); None:
        the upstream timeout plus 30 s (no heartbeat). ``stopping``: set when the worker stops, so a
        line waiting for a slot stands aside (``Deferred``) instead of holding the stop up. ``held``:
        the process's slots (one registry, whichever limiter object took them)."""
        self.adaptive = adaptive  # false: every route is fixed, whatever its mode
        self.mode = mode  # a route's mode when it names none
        self.tolerance = tolerance
        self.default_timeout_s = default_timeout_s
        self.breaker = breaker or BreakerPolicy(failures=0)
        self.slot_ttl_s = slot_ttl_s
        self.stopping = stopping or threading.Event()
        self.held = held if held is not None else HeldSlots()
        self._client = client
        self._acquire = Script(client, scripts.ACQUIRE)
        self._release = Script(client, scripts.RELEASE)

    def acquire(
        self, route: Route, deadline: float | None = None, keepalive: Keepalive | None = None, may_defer: bool = True
    ) -> str | None:
        """Wait for a slot on ``route``; returns the slot's token (None when the route is unlimited).

        Raises ``RouteDown`` when the route is down and the wait has lasted too long (or ``deadline``,
        the batch's expiry, has passed), ``Deferred`` when it is down and enough lines wait for it.
        ``keepalive`` is called now and then while waiting (the line's lease is renewed through it:
        an outage can outlast a lease). A line that may not defer (its batch spans routes, so the
        scheduler cannot park it) waits in its thread whatever the number of waiters. Once the
        worker is stopping, a line that would wait raises ``Deferred`` (back to its batch's turn).
        """
        if not self._limits(route):
            return None
        token = secrets.token_hex(8)
        call = self._acquire_call(route, token, may_defer)
        while not self._granted(route, self._acquire.run({"slot": call}), deadline):
            if self.stopping.is_set():
                raise Deferred(route.name)
            if keepalive is not None:
                keepalive()
            call = self._acquire_call(route, token, may_defer)  # asked again now, with the time of now
        self.granted(route, token)
        return token

    def granted(self, route: Route, token: str) -> None:
        """``token`` holds a slot on ``route`` (taken here, or by an ACQUIRE folded into another
        script): the heartbeat keeps it alive until it is given back."""
        self.held.add(route.name, token)

    def renew_held(self) -> int:
        """The heartbeat's part: the slots held here live another ``slot_ttl_s``."""
        return self.held.renew(self._client, self.slot_ttl_s) if self.slot_ttl_s else 0

    def _granted(self, route: Route, reply: bytes, deadline: float | None) -> bool:
        """True when an ACQUIRE reply granted the slot; otherwise waits as the reply says first."""
        if reply == b"d":  # the route is down and enough lines wait for it: back to the scheduler
            raise Deferred(route.name)
        if reply.startswith(b"o"):  # the route is down: wait for the next probe
            left, _, since = reply[1:].partition(b":")
            now = clock.now()
            if gives_up(float(since), now, self.breaker, deadline):
                raise RouteDown(route.name, now - float(since))
            time.sleep(float(left) * random.uniform(1.0, 1.2))
            return False
        wait = float(reply)
        if wait == 0:
            return True
        if wait < 0:  # at the cap: sleep until some worker frees a slot (or a short timeout)
            self._client.blpop([keys.limit_freed(route.name)], timeout=random.uniform(0.05, FREED_WAIT_S))
        else:
            time.sleep(min(wait, NAP_S))
        return False

    def release(self, done: Release) -> RouteState:
        """Give the slot back and record the outcome in the route's health; returns its state now."""
        call = self.release_call(done)
        if call is None:
            return RouteState.CLOSED
        health = Health.parse(self._release.run({"slot": call}))
        log_change(done.route.name, health)
        return health.state

    def acquire_call(self, route: Route) -> tuple[str, Call] | None:
        """A new token and the ACQUIRE call for it, to run inside another script (None: unlimited).
        It only asks: on a down route it neither waits nor stands aside (``acquire`` does, after)."""
        if not self._limits(route):
            return None
        token = secrets.token_hex(8)
        return token, self._acquire_call(route, token, waits=False)

    def _limits(self, route: Route) -> bool:
        return route.limited or self.breaker.enabled

    def release_call(self, done: Release) -> Call | None:
        """The RELEASE call that gives back ``done``'s slot and records its outcome (None: nothing to do)."""
        route = done.route
        if done.token is not None:
            self.held.discard(route.name, done.token)  # given back now, or run out on its own
        if done.outcome == "none":
            return None
        if done.token is None and not (route.limited and done.outcome == "throttled") and not self.breaker.enabled:
            return None
        args = {
            "token": done.token or "", "now": clock.now(), "outcome": done.outcome,
            "retry_after": done.retry_after or 0, "cap": route.max_in_flight, "mode": self.mode_of(route),
            "w0": self._w0(route), "latency": done.latency_s, "tolerance": self.tolerance_of(route),
            "min_cut": gradient.BACKGROUND_CUT if route.priority == "background" else gradient.NORMAL_CUT,
            "seconds": done.seconds, "sent_at": done.sent_at,
            "failures": self.breaker.failures,
            "smoothing": gradient.SMOOTHING, "drift": gradient.DRIFT_PER_S, "follow": gradient.BASE_FOLLOW,
            "band": gradient.GROW_BAND,
        }  # fmt: skip
        return Call(_release_keys(route.name), args)

    def _acquire_call(self, route: Route, token: str, may_defer: bool = True, waits: bool = True) -> Call:
        # recovery: a slot lives slot_ttl_s past its worker's last beat (without a heartbeat, past the
        # upstream timeout): a dead worker's slots come back after that
        slot_ttl_s = self.slot_ttl_s or (route.timeout_s or self.default_timeout_s) + 30
        args = {
            "now": clock.now(), "token": token, "ttl": slot_ttl_s, "cap": route.max_in_flight, "rpm": route.rpm,
            "adaptive": int(self.mode_of(route) != "fixed"), "w0": self._w0(route),
            "breaker": int(self.breaker.enabled), "probe_ms": int(self.breaker.probe_s * 1000),
            "waiters": self.breaker.waiters if may_defer else 0, "waits": int(waits),
        }  # fmt: skip
        return Call(_acquire_keys(route.name), args)

    def mode_of(self, route: Route) -> str:
        """throughput | aimd | gradient | fixed: the route's own, else the default; fixed when
        adapting is off. A background route is always gradient: latency is how it sees the
        interactive users."""
        if not self.adaptive:
            return "fixed"
        return "gradient" if route.priority == "background" else (route.mode or self.mode)

    def tolerance_of(self, route: Route) -> float:
        tolerance = route.tolerance or self.tolerance
        return min(tolerance, gradient.BACKGROUND_TOLERANCE) if route.priority == "background" else tolerance

    def _w0(self, route: Route) -> float:
        """The window before any feedback: the cap for aimd; a few for gradient, which measures the
        unloaded latency first and doubles from there; a round's worth for throughput."""
        cap, mode = route.max_in_flight, self.mode_of(route)
        start = {"gradient": gradient.START, "throughput": throughput.START}.get(mode, cap)
        return float(min(cap, start))


def log_change(route: str, health: Health) -> None:
    """One log line when a route opens (down) or closes (back)."""
    if not health.changed:
        return
    if health.state is RouteState.OPEN:
        log.warning("upstream route down: breaker open, lines wait", extra={"route": route})
    else:
        log.warning("upstream route back: breaker closed", extra={"route": route})


def _acquire_keys(name: str) -> dict[str, str]:
    return {
        "inflight": keys.limit_inflight(name), "notbefore": keys.limit_notbefore(name), "tat": keys.limit_tat(name),
        "window": keys.limit_window(name), "health": keys.limit_health(name), "probe": keys.limit_probe(name),
        "waiters": keys.limit_waiters(name),
    }  # fmt: skip


def _release_keys(name: str) -> dict[str, str]:
    return {
        "inflight": keys.limit_inflight(name), "notbefore": keys.limit_notbefore(name),
        "window": keys.limit_window(name), "freed": keys.limit_freed(name), "health": keys.limit_health(name),
    }  # fmt: skip
