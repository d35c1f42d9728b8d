"""Fixtures shared by the vocoder tests; each test module defines `bundle` (which tiny vocoder it tests)."""

import shutil
from pathlib import Path

import pytest

from spiritserve.vocoder.base import UnitVocoder


@pytest.fixture(scope="module")
def vocoder(bundle: Path) -> UnitVocoder:
    return UnitVocoder.from_dir(bundle)


@pytest.fixture
def bundle_copy(bundle: Path, tmp_path: Path) -> Path:
    """A copy of the module's bundle that a test may damage."""
    target = tmp_path / "vocoder"
    shutil.copytree(bundle, target)
    return target
