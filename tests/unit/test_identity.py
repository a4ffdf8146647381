"""A deployment's identity: the pure verdict, the marker beside the data, and the guard."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchq.domain.identity import Sides, Verdict, judge, problem
from batchq.errors import WrongDeployment
from batchq.storage import keys
from batchq.storage.identity import Deployment, DirMarker


@pytest.mark.parametrize(
    ("sides", "verdict"),
    [
        (Sides("a", "a"), Verdict.MATCH),
        (Sides(None, None), Verdict.CREATE),  # a first start
        (Sides(None, None, has_files=True, files_known=True), Verdict.CREATE),  # an upgrade: Redis records files
        (Sides(None, None, has_files=True), Verdict.REFUSE),  # an empty or wrong Redis, met first
        (Sides("a", None), Verdict.ADOPT),  # new data storage
        (Sides("a", None, has_files=True, files_known=True), Verdict.ADOPT),  # an upgrade, the id written already
        (Sides("a", None, has_files=True), Verdict.REFUSE),  # another Redis, or the wrong directory
        (Sides(None, "a"), Verdict.REFUSE),  # an empty or wrong Redis
        (Sides("a", "b"), Verdict.REFUSE),  # two deployments
    ],
)
def test_the_verdict(sides: Sides, verdict: Verdict) -> None:
    assert judge(sides) is verdict
    said = problem(sides, "redis://r:6379/0", "the data directory /d")
    assert (said is None) == (verdict is not Verdict.REFUSE)


def test_each_refusal_says_what_differs_and_how_to_fix_it() -> None:
    empty = problem(Sides(None, "d1"), "redis://r:6379/0", "the data directory /d")
    assert empty and "redis://r:6379/0 has no deployment id" in empty and "d1" in empty
    assert "BATCHQ_REDIS_URL" in empty and "batchq deployment --adopt" in empty and "nothing is deleted" in empty
    other = problem(Sides("r1", "d1"), "redis://r:6379/0", "the data directory /d")
    assert other and "r1" in other and "d1" in other and "BATCHQ_DATA_DIR" in other


class FakeRedis:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    def set(self, key: str, value: str, nx: bool = False) -> bool:
        if nx and key in self.data:
            return False
        self.data[key] = value.encode()
        return True

    def exists(self, key: str) -> int:
        return int(key in self.data)


def test_a_first_start_writes_the_id_to_redis_then_beside_the_data(tmp_path: Path) -> None:
    r = FakeRedis()
    first = Deployment(r, DirMarker(tmp_path), "redis://r")  # type: ignore[arg-type]
    assert first.establish() is None
    written = r.data[keys.DEPLOYMENT].decode()
    assert (tmp_path / "deployment").read_text().strip() == written
    assert Deployment(r, DirMarker(tmp_path), "redis://r").establish() is None  # type: ignore[arg-type]
    assert r.data[keys.DEPLOYMENT].decode() == written, "a second process keeps the id"


def test_an_empty_redis_facing_a_deployments_data_deletes_nothing(tmp_path: Path) -> None:
    (tmp_path / "deployment").write_text("d1\n")
    r = FakeRedis()
    found = Deployment(r, DirMarker(tmp_path), "redis://r")  # type: ignore[arg-type]
    assert found.establish() is not None
    assert keys.DEPLOYMENT not in r.data, "the empty Redis is not given an id"
    with pytest.raises(WrongDeployment) as refused:
        found.guard()
    assert refused.value.status_code == 503 and refused.value.code == "deployment_mismatch"
    assert found.adopt() == "d1"  # the operator's fix
    found.guard()


def test_an_empty_redis_met_before_any_id_does_not_adopt_existing_files(tmp_path: Path) -> None:
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / ("file-" + "0" * 32)).write_bytes(b"{}\n")
    r = FakeRedis()
    assert Deployment(r, DirMarker(tmp_path), "redis://r").establish() is not None  # type: ignore[arg-type]
    assert keys.DEPLOYMENT not in r.data and not (tmp_path / "deployment").exists()


def test_the_marker_is_never_overwritten(tmp_path: Path) -> None:
    marker = DirMarker(tmp_path)
    assert marker.create("one") == "one"
    assert marker.create("two") == "one"
    assert [p.name for p in tmp_path.iterdir()] == ["deployment"], "no temporary file left"


def test_a_directory_with_files_but_no_marker_is_not_adopted_by_a_redis_that_does_not_know_them(
    tmp_path: Path,
) -> None:
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / ("file-" + "1" * 32)).write_bytes(b"x")
    r = FakeRedis()
    r.data[keys.DEPLOYMENT] = b"r1"  # another deployment's Redis
    found = Deployment(r, DirMarker(tmp_path), "redis://r")  # type: ignore[arg-type]
    said = found.establish()
    assert said is not None and "no record of them" in said and "batchq deployment --adopt" in said
    assert not (tmp_path / "deployment").exists(), "the directory is not given the other Redis's id"
    r.data[keys.file("file-" + "1" * 32)] = b"1"  # this Redis does record them: an upgrade
    assert found.establish() is None
    assert (tmp_path / "deployment").read_text().strip() == "r1"


def test_a_forced_adopt_gives_redis_the_datas_id_where_both_differ(tmp_path: Path) -> None:
    (tmp_path / "deployment").write_text("d1\n")
    r = FakeRedis()
    r.data[keys.DEPLOYMENT] = b"r1"
    found = Deployment(r, DirMarker(tmp_path), "redis://r")  # type: ignore[arg-type]
    assert found.check() is not None
    assert found.adopt() == "r1" and found.check() is not None, "not without --force"
    assert found.adopt(force=True) == "d1"
    assert found.check() is None


def test_a_sweep_checks_the_deployment_once_and_its_guards_keep_that_verdict(tmp_path: Path) -> None:
    r = FakeRedis()
    found = Deployment(r, DirMarker(tmp_path), "redis://r")  # type: ignore[arg-type]
    assert found.establish() is None
    reads = []
    real_get = r.get
    r.get = lambda key: reads.append(key) or real_get(key)  # type: ignore[method-assign]
    with found.checked_once() as mismatch:
        assert mismatch is None
        del r.data[keys.DEPLOYMENT]  # flips half-way through the sweep
        for _ in range(4):
            found.guard()  # the file and upload sweeps of this pass
    assert reads.count(keys.DEPLOYMENT) == 1
    with pytest.raises(WrongDeployment):
        found.guard()  # the next pass (or the API) sees the flip
