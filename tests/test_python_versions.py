"""The Pythons spiritserve declares: 3.11 (.venv, the CPU image) and 3.12 (the CUDA image's vLLM base). Text only."""

import re
import tomllib
from pathlib import Path

from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_requires_python_admits_3_11_and_3_12() -> None:
    requires = SpecifierSet(PYPROJECT["project"]["requires-python"])
    for version in ("3.11.0", "3.11.14", "3.12.0", "3.12.12"):
        assert version in requires, (version, str(requires))
    assert not set(requires.filter(["3.10.15", "3.13.0"])), "declared for a Python nothing here is tested on"


def test_lint_and_type_check_target_the_oldest_supported_python() -> None:
    assert PYPROJECT["tool"]["ruff"]["target-version"] == "py311"
    assert PYPROJECT["tool"]["mypy"]["python_version"] == "3.11"


def test_no_dockerfile_installs_past_requires_python() -> None:
    dockerfiles = [p for p in ROOT.rglob("Dockerfile*") if not {".venv", ".git"} & set(p.parts)]
    assert ROOT / "Dockerfile" in dockerfiles and ROOT / "Dockerfile.cpu" in dockerfiles
    for path in dockerfiles:
        assert "--ignore-requires-python" not in path.read_text(), path


def test_the_python_3_12_job_lists_only_test_files_that_exist() -> None:
    script = (ROOT / "scripts" / "test-py312.sh").read_text()
    listed = re.search(r"^TESTS=\(\n(.*?)^\)", script, re.M | re.S)
    assert listed, "scripts/test-py312.sh has no TESTS=( ... ) list"
    files = listed.group(1).split()
    assert files and all((ROOT / name).is_file() for name in files), files
