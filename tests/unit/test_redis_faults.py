"""Redis faults seen from one process: bounded retries, the errors' translation, startup checks."""

from __future__ import annotations

import errno
import logging
import time
from typing import Any

import pytest
import redis
from redis._parsers.base import BaseParser

from batchq.api.errors import translate
from batchq.errors import StorageFull, Unavailable
from batchq.storage.redis_client import BoundedRetry
from batchq.storage.server import durability_problems, warn_if_not_durable


def raising(exc: Exception, calls: list[float] | None = None) -> Any:
    def call() -> None:
        if calls is not None:
            calls.append(time.monotonic())
        raise exc

    return call


def test_a_retry_gives_up_within_its_budget() -> None:
    calls: list[float] = []
    started = time.monotonic()
    with pytest.raises(redis.ConnectionError):
        BoundedRetry(0.3).call_with_retry(raising(redis.ConnectionError("refused"), calls), lambda _: None)
    assert time.monotonic() - started <= 0.35 and len(calls) >= 2


def test_a_nested_retry_keeps_to_the_outer_deadline() -> None:
    """redis-py retries a command, and reconnects under its own retry inside it."""
    inner, started = BoundedRetry(5.0), time.monotonic()

    def reconnect() -> None:
        inner.call_with_retry(raising(redis.ConnectionError("refused")), lambda _: None)

    with pytest.raises(redis.ConnectionError):
        BoundedRetry(0.3).call_with_retry(reconnect, lambda _: None)
    assert time.monotonic() - started <= 0.35


def test_no_budget_means_one_try() -> None:
    calls: list[float] = []
    with pytest.raises(redis.TimeoutError):
        BoundedRetry(0).call_with_retry(raising(redis.TimeoutError(), calls), lambda _: None)
    assert len(calls) == 1


def refusal(reply: str) -> Exception:
    """The exception redis-py raises for an error reply (some get a class of their own, without the prefix)."""
    return BaseParser.parse_error(reply)


@pytest.mark.parametrize(
    ("exc", "kind", "status"),
    [
        (redis.ConnectionError("refused"), Unavailable, 503),
        (redis.TimeoutError("slow"), Unavailable, 503),
        (redis.BusyLoadingError("loading"), Unavailable, 503),
        (redis.ReadOnlyError("replica"), Unavailable, 503),
        (OSError(errno.ENOSPC, "No space left on device"), StorageFull, 507),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), StorageFull, 507),
        (redis.OutOfMemoryError("OOM command not allowed when used memory > 'maxmemory'."), StorageFull, 507),
        (refusal("MISCONF Errors writing to the AOF file: No space left on device"), StorageFull, 507),
        (refusal("NOREPLICAS Not enough good replicas to write."), Unavailable, 503),
        (refusal("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'."), Unavailable, 503),
        (refusal("BUSY Redis is busy running a script."), Unavailable, 503),
        (refusal("TRYAGAIN Multiple keys request during rehashing of slot"), Unavailable, 503),
    ],
)
def test_foreign_errors_become_batchq_errors(exc: Exception, kind: type, status: int) -> None:
    mapped = translate(exc)
    assert isinstance(mapped, kind) and mapped.status_code == status
    assert (mapped.retry_after is not None) == (status == 503)


@pytest.mark.parametrize("exc", [OSError(errno.EACCES, "denied"), redis.ResponseError("WRONGTYPE"), KeyError("x")])
def test_other_errors_stay_bugs(exc: Exception) -> None:
    assert translate(exc) is None


class FakeConfig:
    def __init__(self, config: dict[str, str] | Exception) -> None:
        self.config = config

    def config_get(self, name: str) -> dict[str, str]:
        if isinstance(self.config, Exception):
            raise self.config
        return {name: self.config[name]} if name in self.config else {}


@pytest.mark.parametrize(
    ("config", "problems"),
    [
        ({"appendonly": "yes", "save": "", "maxmemory-policy": "noeviction"}, []),
        ({"appendonly": "no", "save": "3600 1", "maxmemory-policy": "noeviction"}, []),
        ({"appendonly": "no", "save": "", "maxmemory-policy": "noeviction"}, ["no persistence"]),
        ({"appendonly": "yes", "save": "", "maxmemory-policy": "allkeys-lru"}, ["allkeys-lru"]),
    ],
)
def test_durability_problems(config: dict[str, str], problems: list[str]) -> None:
    found = durability_problems(FakeConfig(config))  # type: ignore[arg-type]
    assert len(found) == len(problems) and all(p in f for p, f in zip(problems, found, strict=True))


@pytest.mark.parametrize("refusal", [redis.ResponseError("unknown command 'CONFIG'"), redis.ConnectionError("down")])
def test_an_unchecked_redis_is_said_at_info_and_never_crashes(refusal: Exception, caplog: Any) -> None:
    with caplog.at_level(logging.DEBUG, logger="batchq.redis"):
        warn_if_not_durable(FakeConfig(refusal))  # type: ignore[arg-type]
    assert [r.levelname for r in caplog.records] == ["INFO"] and "not checked" in caplog.records[0].message


def test_a_redis_without_persistence_is_a_warning(caplog: Any) -> None:
    with caplog.at_level(logging.DEBUG, logger="batchq.redis"):
        warn_if_not_durable(FakeConfig({"appendonly": "no", "save": "", "maxmemory-policy": "volatile-lru"}))  # type: ignore[arg-type]
    assert [r.levelname for r in caplog.records] == ["WARNING", "WARNING"]
