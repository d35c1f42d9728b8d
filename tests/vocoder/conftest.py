"""Fixtures shared by the vocoder tests; each test module defines `bundle` (which tiny vocoder it tests)."""

import shutil
from pathlib import Path

import pytest

from spiritserve.tiny import write_tiny_base_vocoder, write_tiny_expressive_vocoder
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


@pytest.fixture(scope="module", params=["base", "expressive"])
def each_vocoder(request, tmp_path_factory) -> UnitVocoder:
    """The tiny base vocoder, then the tiny expressive one (for tests that hold for both)."""
    folder: Path = tmp_path_factory.mktemp(request.param)
    writer = write_tiny_base_vocoder if request.param == "base" else write_tiny_expressive_vocoder
    writer(folder, seed=3)
    return UnitVocoder.from_dir(folder)
