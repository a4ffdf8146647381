"""A deployment's identity: the id in Redis and the id beside the data must match before anything
is deleted.

At its first start a deployment writes a random id to Redis and a marker with the same id beside
its data (``BATCHQ_DATA_DIR/deployment``; an object-store backend puts the same marker at its
prefix). Every process compares the two before it deletes anything (the orphan sweep, file and
upload expiry, a file deleted through the API). A Redis pointed at by mistake (a typo in a URL, an
empty or other deployment's Redis, one restarted without persistence) would otherwise make every
file look like an orphan, and the sweep would erase every tenant's data.

``judge`` is pure: the two ids (and whether each side holds anything) in, a ``Verdict`` out:

- both ids equal                                  -> MATCH
- no marker, and the data holds files Redis has   -> REFUSE (a wrong or empty Redis, or the wrong
  no record of (a sample of them)                      directory, met before the marker was written)
- neither side has an id (and no such files)      -> CREATE (a first start, or an upgrade)
- Redis has one, the data has none (and no such   -> ADOPT (write the marker: new data storage)
  files)
- Redis has none, the data has one                -> REFUSE (an empty or wrong Redis)
- both have ids, and they differ                  -> REFUSE (another deployment's Redis or data)

``problem`` says, in one sentence, what differs and how to fix it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Verdict(StrEnum):
    MATCH = "match"
    CREATE = "create"
    ADOPT = "adopt"
    REFUSE = "refuse"


@dataclass(frozen=True)
class Sides:
    """What each side holds: its id (None: none yet) and whether it holds any data."""

    redis_id: str | None
    marker_id: str | None
    has_files: bool = False  # the data storage holds files or upload parts
    files_known: bool = False  # Redis has records for (most of) a sample of those files

    @property
    def strange_files(self) -> bool:
        """Files beside no marker that this Redis does not know: they are not this Redis's."""
        return self.marker_id is None and self.has_files and not self.files_known


def judge(s: Sides) -> Verdict:
    if s.redis_id is not None and s.redis_id == s.marker_id:
        return Verdict.MATCH
    if s.strange_files:
        return Verdict.REFUSE
    if s.marker_id is None:
        return Verdict.CREATE if s.redis_id is None else Verdict.ADOPT
    return Verdict.REFUSE


def problem(s: Sides, redis_where: str, data_where: str) -> str | None:
    """Why nothing may be deleted, and how to fix it; None when the two sides match."""
    if judge(s) is not Verdict.REFUSE:
        return None
    stop = "nothing is deleted (orphan sweep, expiry, file deletion) until this is fixed"
    if s.redis_id is None and s.marker_id is not None:
        return (
            f"deployment mismatch: the Redis at {redis_where} has no deployment id, but {data_where} belongs to"
            f" deployment {s.marker_id}: it is an empty or another Redis (a wrong BATCHQ_REDIS_URL, or one that lost"
            f" its data); {stop}. Point BATCHQ_REDIS_URL at this deployment's Redis, or, if this Redis is to take"
            f" these files over, run `batchq deployment --adopt`"
        )
    if s.strange_files:
        return (
            f"deployment mismatch: {data_where} holds files but no deployment marker, and the Redis at {redis_where}"
            f" has no record of them: a wrong BATCHQ_REDIS_URL or BATCHQ_DATA_DIR, or a Redis that lost its data;"
            f" {stop}. Point the two at the same deployment, or, if this Redis is to take these files over, run"
            f" `batchq deployment --adopt`"
        )
    return (
        f"deployment mismatch: the Redis at {redis_where} belongs to deployment {s.redis_id}, {data_where} to"
        f" deployment {s.marker_id}; {stop}. Point BATCHQ_REDIS_URL and BATCHQ_DATA_DIR at the same deployment,"
        f" or, if this Redis is to take these files over for good, run `batchq deployment --adopt --force`"
    )
