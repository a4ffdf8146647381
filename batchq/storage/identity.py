"""Where a deployment's id lives (``batchq.domain.identity``): a key in Redis, and a marker beside
the data. ``Marker`` is what a data backend provides: ``DirMarker`` writes ``BATCHQ_DATA_DIR/
deployment``; an object-store backend would write the same one-line object at its prefix.

``Deployment`` compares the two: ``establish`` at a process's start (writing the id where a first
start or new data storage needs it), ``check`` before anything is deleted (one ERROR log line per
process when they differ), ``guard`` for the stores (raises ``WrongDeployment``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import redis

from batchq.domain import identity
from batchq.domain.identity import Sides, Verdict
from batchq.errors import WrongDeployment
from batchq.storage import keys

log = logging.getLogger("batchq.deployment")
MARKER_NAME = "deployment"
SAMPLE = 20  # files compared with Redis's records when the data has files but no marker


class Marker(Protocol):
    """The deployment id beside the data."""

    where: str  # for messages: which data storage this is

    def read(self) -> str | None:
        """The id written there, or None when there is none yet."""

    def create(self, deployment_id: str) -> str:
        """Write ``deployment_id`` unless an id is there already (atomically); returns the one there."""

    def has_data(self) -> bool:
        """Whether the storage holds any file or upload part."""

    def sample(self, count: int) -> list[str]:
        """Up to ``count`` ids of the files it holds."""


class DirMarker:
    """``<data dir>/deployment``: the id on one line."""

    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir)
        self.path = self.root / MARKER_NAME
        self.where = f"the data directory {self.root.resolve()} (BATCHQ_DATA_DIR)"

    def read(self) -> str | None:
        try:
            return self.path.read_text(encoding="utf-8").strip() or None
        except FileNotFoundError:
            return None

    def create(self, deployment_id: str) -> str:
        """Written whole to a temporary name, then linked into place: ``link`` fails if the marker
        exists, so two processes starting at once cannot overwrite each other's."""
        self.root.mkdir(parents=True, exist_ok=True)
        temp = self.root / f".{MARKER_NAME}-{secrets.token_hex(8)}"
        temp.write_text(deployment_id + "\n", encoding="utf-8")
        try:
            os.link(temp, self.path)
        except FileExistsError:
            pass
        finally:
            temp.unlink(missing_ok=True)
        return self.read() or deployment_id

    def has_data(self) -> bool:
        for sub in ("files", "uploads"):
            with contextlib.suppress(FileNotFoundError), os.scandir(self.root / sub) as entries:
                if any(True for _ in entries):
                    return True
        return False

    def sample(self, count: int) -> list[str]:
        found: list[str] = []
        with contextlib.suppress(FileNotFoundError), os.scandir(self.root / "files") as entries:
            for entry in entries:
                if entry.name.startswith("file-"):
                    found.append(entry.name)
                if len(found) >= count:
                    break
        return found


class Deployment:
    def __init__(self, client: redis.Redis, marker: Marker, redis_where: str) -> None:
        self.r = client
        self.marker = marker
        self.redis_where = redis_where
        self._logged: str | None = None  # the problem last logged (one ERROR per problem per process)
        self._held = threading.local()  # .found: the verdict of ``checked_once`` on this thread

    def sides(self) -> Sides:
        raw = self.r.get(keys.DEPLOYMENT)
        redis_id = raw.decode() if raw else None
        marker_id = self.marker.read()
        if redis_id is not None and redis_id == marker_id:
            return Sides(redis_id, marker_id)
        has_files = self.marker.has_data()
        known = marker_id is None and has_files and self._knows(self.marker.sample(SAMPLE))
        return Sides(redis_id, marker_id, has_files=has_files, files_known=known)

    def _knows(self, sample: list[str]) -> bool:
        """Redis has a record for at least half of ``sample`` (a few orphans aside, its own files)."""
        if not sample:
            return False  # upload parts alone: nothing to compare by
        found = sum(1 for file_id in sample if self.r.exists(keys.file(file_id)))
        return 2 * found >= len(sample)

    def establish(self) -> str | None:
        """At a process's start: write the id where it is missing (a first start: Redis first, then
        the marker, so a crash between leaves a case ADOPT completes); returns ``check()``."""
        sides = self.sides()
        verdict = identity.judge(sides)
        if verdict is Verdict.CREATE:
            self.r.set(keys.DEPLOYMENT, secrets.token_hex(16), nx=True)
            sides = self.sides()
            verdict = identity.judge(sides)
        if verdict is Verdict.ADOPT and sides.redis_id is not None:
            self.marker.create(sides.redis_id)
            log.info("deployment id written beside the data", extra={"deployment": sides.redis_id})
        return self.check()

    def establish_at_start(self) -> None:
        """``establish``, for a process starting while Redis may be away: it starts all the same
        (the API's /health and every watchdog sweep check the deployment again)."""
        try:
            self.establish()
        except redis.RedisError:
            log.warning("deployment id not checked at start: Redis did not answer", exc_info=True)

    def adopt(self, force: bool = False) -> str:
        """An operator's choice (``batchq deployment --adopt``): this Redis and this data become one
        deployment. Redis takes the data's id where it has none, the data takes Redis's where it
        has none; where both have one and they differ, only ``force`` (``--force``) gives Redis the
        data's id. Returns the id in Redis."""
        marker_id = self.marker.read()
        if force and marker_id is not None:
            self.r.set(keys.DEPLOYMENT, marker_id)
            return marker_id
        wanted = marker_id or secrets.token_hex(16)
        if self.r.set(keys.DEPLOYMENT, wanted, nx=True):
            self.marker.create(wanted)
            return wanted
        raw = self.r.get(keys.DEPLOYMENT)
        redis_id = raw.decode() if raw else wanted
        if marker_id is None:
            self.marker.create(redis_id)  # files beside no marker: the operator vouched for them
        return redis_id

    def check(self) -> str | None:
        """Why nothing may be deleted now (None: the two sides match). Logged once per process."""
        found = identity.problem(self.sides(), self.redis_where, self.marker.where)
        if found is not None and found != self._logged:
            log.error(found)
        elif found is None and self._logged is not None:
            log.info("deployment ids match again: deleting resumes")
        self._logged = found
        return found

    @contextmanager
    def checked_once(self) -> Iterator[str | None]:
        """``check()`` once for a whole pass (the watchdog's sweep): the guards inside it on this
        thread use that verdict, so one sweep cannot flip half-way (and Redis is asked once)."""
        found = self.check()
        self._held.found = (found,)
        try:
            yield found
        finally:
            self._held.found = None

    def guard(self) -> None:
        """Before a deletion: raises ``WrongDeployment`` unless the two sides match."""
        held = getattr(self._held, "found", None)
        found = held[0] if held is not None else self.check()
        if found is not None:
            raise WrongDeployment(found)
