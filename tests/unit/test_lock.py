"""The locks (requirements/*.lock) against pyproject.toml, and the installs that read them.

A lock that misses a dependency, pins a version outside its range, or lacks a hash would install
something else than what CI tested; `make lock` regenerates both locks.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCKS = {"runtime": ROOT / "requirements/runtime.lock", "dev": ROOT / "requirements/dev.lock"}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^ ;\\]+)", re.M)


def pins(lock: Path) -> dict[str, str]:
    """{canonical name: version} of every pinned line of a lock."""
    return {canonicalize_name(name): version for name, version in PIN.findall(lock.read_text(encoding="utf-8"))}


def requirements(*extras: str) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    optional = project["optional-dependencies"]
    wanted = list(project["dependencies"]) + [dep for extra in extras for dep in optional[extra]]
    build = (ROOT / "requirements/build.in").read_text(encoding="utf-8").splitlines()
    wanted += [line for line in build if line.strip() and not line.startswith("#")]
    return [Requirement(text) for text in wanted]


@pytest.mark.parametrize(("lock", "extras"), [("runtime", ("monitor",)), ("dev", ("dev",))])
def test_the_lock_pins_every_dependency_within_its_range(lock: str, extras: tuple[str, ...]) -> None:
    pinned = pins(LOCKS[lock])
    for requirement in requirements(*extras):
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{requirement} is not in {lock}.lock: run make lock"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"{lock}.lock pins {name}=={pinned[name]}, outside {requirement.specifier}: run make lock"
        )


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_every_pin_has_hashes_and_no_index_is_named(lock: str) -> None:
    text = LOCKS[lock].read_text(encoding="utf-8")
    entries = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])
    for entry in entries:
        assert "--hash=sha256:" in entry, f"{entry.splitlines()[0]}: no hash"
    assert "://" not in text, "a lock names no index: installs use the client's own configuration"


def test_runtime_and_dev_locks_agree() -> None:
    """The dev lock is resolved within the runtime lock: the tests run what the image ships."""
    runtime, dev = pins(LOCKS["runtime"]), pins(LOCKS["dev"])
    assert {name: dev[name] for name in runtime if name in dev} == {
        name: version for name, version in runtime.items() if name in dev
    }


def test_installs_read_the_locks() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "--require-hashes --no-deps -r $(LOCK)" in makefile and "LOCK   = requirements/dev.lock" in makefile
    dockerfile = (ROOT / "deploy/Dockerfile").read_text(encoding="utf-8")
    assert "--require-hashes --no-deps -r requirements/runtime.lock" in dockerfile
    project_install = r"pip install [^\n]*--no-deps --no-build-isolation \."
    assert re.search(project_install, dockerfile), "the project itself adds nothing"
    assert "make test" in (ROOT / ".ci/run").read_text(encoding="utf-8")
