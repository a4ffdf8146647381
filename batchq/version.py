"""batchq's version: pyproject.toml's ``version``, the one place it is written.

An installed package reads it from its metadata (written from pyproject.toml at install). A source
checkout on ``PYTHONPATH`` (tests, a development tree beside another install) reads the
pyproject.toml beside the package first, so the version always matches the code that runs.
"""

from __future__ import annotations

import tomllib
from functools import lru_cache
from importlib import metadata
from pathlib import Path

UNKNOWN = "0+unknown"  # neither a source checkout nor an installed package (should not happen)


@lru_cache(maxsize=1)
def version() -> str:
    return _from_source(Path(__file__).resolve().parents[1] / "pyproject.toml") or _installed()


def _from_source(pyproject: Path) -> str | None:
    try:
        project = tomllib.loads(pyproject.read_text())["project"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return None
    return str(project["version"]) if project.get("name") == "batchq" and "version" in project else None


def _installed() -> str:
    try:
        return metadata.version("batchq")
    except metadata.PackageNotFoundError:
        return UNKNOWN
