"""The web UI in Debian's headless Chromium (selenium + chromedriver): speak, add a voice, compose.

Screenshots go to the test's temp directory, or to $CADENZA_SCREENSHOT_DIR (docs/ holds the ones made so).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from test_serve import _ab_midi, _clip

from cadenza.serve import ServerConfig, create_app
from cadenza.serve.background import serve_in_background
from cadenza.serve.speech_engine import HiggsAudioServeEngine

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--disable-dev-shm-usage", "--autoplay-policy=no-user-gesture-required", "--window-size=1100,1250")

if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)) and not os.environ.get("CI"):
    pytest.skip("needs Debian's chromium and chromium-driver (make setup installs them)", allow_module_level=True)


@pytest.fixture(scope="module")
def browser():
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must not look for drivers online
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def page(browser, tiny_speech_model, tmp_path_factory):
    config = ServerConfig(voices_dir=tmp_path_factory.mktemp("voices"), max_new_tokens=40)
    with serve_in_background(create_app(config, engine=HiggsAudioServeEngine(tiny_speech_model))) as url:
        browser.get(url)
        yield browser


def _wait(driver, script: str, timeout: float = 120):
    """Wait until the JavaScript expression is truthy; return its value."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: d.execute_script(f"return {script}"))


def _screenshot(driver, name: str, tmp_path: Path) -> None:
    folder = Path(os.environ.get("CADENZA_SCREENSHOT_DIR", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(folder / name))


def test_speak_plays_audio_and_offers_a_download(page, tmp_path):
    from selenium.webdriver.common.by import By

    _wait(page, "document.getElementById('voice').options.length > 0")
    text = page.find_element(By.ID, "speak-text")
    text.clear()
    text.send_keys("Good morning from the browser.")
    page.find_element(By.ID, "speak-button").click()
    _wait(page, "document.getElementById('speak-status').textContent.includes('s of speech')")
    assert _wait(page, "document.getElementById('speak-audio').duration") > 0
    link = page.find_element(By.ID, "speak-download")
    assert link.is_displayed() and link.get_attribute("download") == "speech.wav"
    _screenshot(page, "ui_speak.png", tmp_path)


def test_uploading_a_reference_adds_a_voice(page, tmp_path):
    from selenium.webdriver.common.by import By

    clip = tmp_path / "me.wav"
    clip.write_bytes(_clip(1.5))
    page.find_element(By.ID, "ref-name").send_keys("browser_voice")
    page.find_element(By.ID, "ref-file").send_keys(str(clip))
    page.find_element(By.ID, "ref-transcript").send_keys("A clip recorded in a test.")
    page.find_element(By.ID, "ref-upload").click()
    _wait(page, "document.getElementById('voice').value === 'browser_voice'")
    page.find_element(By.ID, "speak-button").click()
    _wait(page, "document.getElementById('speak-status').textContent.includes('s of speech')")


def test_compose_shows_the_piano_roll_and_plays_the_piece(page, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    prompt = tmp_path / "prompt.mid"
    prompt.write_bytes(_ab_midi())
    Select(page.find_element(By.ID, "form")).select_by_visible_text("AB")
    tokens = page.find_element(By.ID, "max-tokens")
    tokens.clear()
    tokens.send_keys("64")
    page.find_element(By.ID, "prompt-midi").send_keys(str(prompt))
    page.find_element(By.ID, "compose-button").click()
    _wait(page, "document.getElementById('compose-status').textContent.startsWith('Sections')", timeout=300)
    assert _wait(page, "document.getElementById('piano-roll').naturalWidth") > 100
    assert _wait(page, "document.getElementById('music-audio').duration") > 0
    assert page.find_element(By.ID, "midi-download").get_attribute("href").startswith("data:audio/midi;base64,")
    page.execute_script("document.getElementById('compose').scrollIntoView()")
    _screenshot(page, "ui_compose.png", tmp_path)
