"""Fixtures of the browser tests: Debian's Chromium driven by Playwright, with a fake microphone."""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile

FIXTURES = Path(__file__).parent.parent / "fixtures"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--autoplay-policy=no-user-gesture-required",
]


@pytest.fixture()
def fake_microphone(tmp_path: Path) -> Path:
    """The committed clip between silences, as the 16-bit PCM WAV Chromium's fake capture device wants."""
    clip, rate = soundfile.read(FIXTURES / "espeak_22k_mono.wav", dtype="int16")
    silence = np.zeros(rate // 2, dtype=np.int16)
    path = tmp_path / "microphone.wav"
    # 3 s of trailing silence: the turn ends after 300 ms of it, and the short answer is done long before the
    # device loops back to the speech (which would barge in).
    soundfile.write(path, np.concatenate([silence, clip, np.tile(silence, 6)]), rate, subtype="PCM_16")
    return path


@pytest.fixture()
def browser(fake_microphone: Path) -> Iterator:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/test.sh, or as root: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[*CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={fake_microphone}"],
        )
        try:
            yield browser
        finally:
            browser.close()
