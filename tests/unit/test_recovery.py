"""After a Redis restart: which leases a worker renews, and which the watchdog takes as run out."""

from __future__ import annotations

from typing import Any

import redis

from batchq.domain.leases import (
    CHECK_S,
    GRACE_S,
    Contact,
    beat_every,
    beating,
    is_stale,
    run_out,
    stale_before,
    woke_late,
)
from batchq.execution.recovery import HeldLines
from batchq.storage.server import ServerInfo


class FakeRedis:
    """Answers INFO server with a run_id the test sets."""

    def __init__(self) -> None:
        self.run_id = "a"

    def info(self, section: str) -> dict[str, Any]:
        assert section == "server"
        return {"run_id": self.run_id, "uptime_in_seconds": 100}


def test_the_heartbeat_renews_every_line_held_and_notices_a_restart() -> None:
    redis, held, renewed = FakeRedis(), HeldLines(), []
    held.add("b1", 0)
    assert held.check(redis, lambda b, lines: renewed.append((b, sorted(lines)))) is False  # type: ignore[arg-type]
    assert renewed == [("b1", [0])]
    held.add("b1", 1)
    held.add("b2", 7)
    held.discard("b1", 0)  # completed
    renewed.clear()
    assert held.check(redis, lambda b, lines: renewed.append((b, sorted(lines)))) is False  # type: ignore[arg-type]
    assert sorted(renewed) == [("b1", [1]), ("b2", [7])], "every beat renews every line held"
    redis.run_id = "b"  # restarted
    renewed.clear()
    assert held.check(redis, lambda b, lines: renewed.append((b, sorted(lines)))) is True  # type: ignore[arg-type]
    assert sorted(renewed) == [("b1", [1]), ("b2", [7])]
    assert held.check(redis, lambda b, lines: None) is False  # type: ignore[arg-type]


def test_a_worker_beats_three_times_per_lease_and_at_least_every_check() -> None:
    assert beat_every(3) == 1.0
    assert beat_every(10) == CHECK_S
    assert beat_every(120) == CHECK_S


def test_leases_of_the_old_redis_count_as_stale_only_after_the_grace() -> None:
    info = ServerInfo("r", started_at=1000.0)
    assert stale_before(info, 1000.0 + GRACE_S - 0.1) is None
    assert stale_before(info, 1000.0 + GRACE_S) == 999.0  # a second early: the start is rounded
    loaded_late = ServerInfo("r", started_at=1000.0, first_seen=1030.0)  # 30 s loading its AOF
    assert stale_before(loaded_late, 1000.0 + GRACE_S) is None, "the grace counts from the first answer"
    assert stale_before(loaded_late, 1030.0 + GRACE_S) == 999.0
    lease_s = 120
    assert is_stale(999.0 + lease_s, lease_s, 1000.0)  # written a second before Redis started
    assert not is_stale(1001.0 + lease_s, lease_s, 1000.0)  # renewed after it started
    assert not is_stale(999.0 + lease_s, lease_s, None)  # still in the grace


def test_after_a_break_with_redis_no_lease_is_judged_by_its_time_until_the_workers_renewed() -> None:
    contact = Contact()
    assert contact.settled(1000.0), "no break seen: leases are judged by time"
    contact.note(True, 0.01, 1000.0)
    assert contact.settled(1000.0)
    contact.note(True, CHECK_S + 1, 1010.0)  # answered, after retrying for seconds: a break
    assert not contact.settled(1010.0 + GRACE_S - 0.1)
    assert contact.settled(1010.0 + GRACE_S)
    contact.note(False, 0.0, 1100.0)
    assert not contact.settled(1101.0)
    assert run_out(999.0, 1000.0, 10, None, settled=True)
    assert not run_out(999.0, 1000.0, 10, None, settled=False), "ran out while nobody could renew it"
    assert run_out(995.0, 1000.0, 10, 990.0, settled=False), "written before Redis restarted"
    assert not run_out(1001.0, 1000.0, 10, None, settled=True)


def test_a_redis_that_refuses_info_still_gets_every_lease_renewed() -> None:
    class Refusing(FakeRedis):
        def info(self, section: str) -> dict[str, Any]:
            raise redis.ResponseError("unknown command 'INFO'")

    held, renewed = HeldLines(), []
    held.add("b1", 3)
    for _ in range(2):
        assert held.check(Refusing(), lambda b, lines: renewed.append((b, lines))) is False  # type: ignore[arg-type]
    assert renewed == [("b1", [3]), ("b1", [3])]


def test_a_line_run_twice_in_one_process_stays_renewed_until_both_let_go() -> None:
    held, renewed = HeldLines(), []
    held.add("b1", 4)
    held.add("b1", 4)  # a redelivered message, run by a second thread of the same process
    held.discard("b1", 4)  # the first run ends
    held.check(FakeRedis(), lambda b, lines: renewed.append((b, lines)))  # type: ignore[arg-type]
    assert renewed == [("b1", [4])]
    held.discard("b1", 4)
    assert held.grouped() == {}


def test_one_batch_that_fails_its_renewal_does_not_cost_the_others_theirs() -> None:
    class TimingOut(FakeRedis):
        def info(self, section: str) -> dict[str, Any]:
            raise redis.TimeoutError("Timeout reading from socket")

    held, renewed = HeldLines(), []
    held.add("b1", 1)
    held.add("b2", 2)

    def renew(batch_id: str, lines: list[int]) -> None:
        if batch_id == "b1":
            raise redis.ConnectionError("reset")
        renewed.append(batch_id)

    assert held.check(TimingOut(), renew) is False  # type: ignore[arg-type]
    assert renewed == ["b2"]


def test_a_watchdog_that_woke_late_or_whose_own_heartbeat_is_late_judges_no_lease_by_time() -> None:
    assert not woke_late(scheduled=100.0, woke=101.0, interval=5.0)
    assert woke_late(scheduled=100.0, woke=112.0, interval=5.0), "the host stalled for 12 s"
    contact = Contact()
    contact.note_break(112.0)
    assert not contact.settled(112.0 + GRACE_S - 0.1) and contact.settled(112.0 + GRACE_S)
    contact.note_break(None)  # no trouble recorded: nothing changes
    contact.note_break(50.0)  # an older break does not move it back
    assert contact.since == 112.0
    lease_s = 10.0
    assert beating(None, 1000.0, lease_s), "a process without a heartbeat (a scheduler) is not held up"
    assert beating(999.0, 1000.0, lease_s)
    assert not beating(1000.0 - 3 * beat_every(lease_s) - CHECK_S, 1000.0, lease_s)
