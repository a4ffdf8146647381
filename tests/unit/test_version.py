"""One version, pyproject.toml's: the package, ``batchq --version``, /health, the image label, the changelog."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from typer.testing import CliRunner

import batchq
from batchq import cli
from batchq.version import _from_source

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_the_package_reports_pyprojects_version() -> None:
    assert batchq.__version__ == PYPROJECT
    assert re.fullmatch(r"\d+\.\d+\.\d+", PYPROJECT)


def test_batchq_version_prints_it_and_exits_0() -> None:
    ran = CliRunner().invoke(cli.app, ["--version"])
    assert ran.exit_code == 0
    assert ran.output.strip() == f"batchq {PYPROJECT}"


def test_python_m_batchq_version_in_a_fresh_process() -> None:
    out = subprocess.run([sys.executable, "-m", "batchq", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"batchq {PYPROJECT}"


def test_a_pyproject_of_another_project_is_not_ours(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "other"\nversion = "9.9.9"\n')
    assert _from_source(tmp_path / "pyproject.toml") is None
    assert _from_source(tmp_path / "missing.toml") is None


def test_the_image_is_labelled_with_the_version_check_sh_passes() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    runtime_stage = dockerfile.rsplit("\nFROM ", 1)[1]
    assert "ARG IMAGE_VERSION" in runtime_stage
    assert 'org.opencontainers.image.version="${IMAGE_VERSION}"' in runtime_stage
    check = (ROOT / "deploy" / "check.sh").read_text()
    assert '--build-arg IMAGE_VERSION="$version"' in check
    assert "pyproject.toml" in check.split("--build-arg")[0].rsplit("version=", 1)[1]


def test_the_changelog_has_a_section_for_this_version_and_the_last() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text()
    headings = re.findall(r"^## \[([^\]]+)\]", changelog, re.M)
    assert PYPROJECT in headings or "Unreleased" in headings
    assert "0.1.0" in headings
