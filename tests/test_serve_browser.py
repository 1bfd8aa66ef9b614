"""The browser demo in a real headless Chromium (Debian's chromium + chromium-driver, driven by
Selenium): Chromium's fake-media flags feed a spoken request (espeak-ng) as the microphone; the
page streams it to /v1/realtime, shows the tool call, the environment's change and the answer,
and plays the spoken answer. A screenshot is saved to tests/artifacts/serve_browser.png (or
$SPEECHLM_TEST_ARTIFACTS). Skipped when chromium or chromedriver is not installed
(tools/install.sh installs them)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from test_serve_realtime import agent_dir, request_pcm, request_wav, running_server  # noqa: F401  (fixtures)
from test_agent_loop import REQUESTS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").is_file() else None)
pytestmark = pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                                reason="chromium and chromium-driver are not installed (tools/install.sh, Debian)")
webdriver = pytest.importorskip("selenium.webdriver")

ARTIFACTS = Path(os.environ.get("SPEECHLM_TEST_ARTIFACTS", Path(__file__).parent / "artifacts"))


def microphone_wav(wav: Path, out: Path) -> Path:
    """The fake microphone's file: the request at 16 kHz with silence around it (the capture may
    start a little late; the silence after it lets the page's detector hear the end)."""
    import soundfile as sf

    pcm = np.frombuffer(request_pcm(wav, lead_s=1.0, tail_s=2.0), dtype="<i2")
    sf.write(str(out), pcm, 16000, subtype="PCM_16")
    return out


@pytest.fixture
def browser(tmp_path, request_wav):  # noqa: F811  (the imported fixture)
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    mic = microphone_wav(request_wav, tmp_path / "mic.wav")
    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,1000", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 f"--use-file-for-fake-audio-capture={mic}%noloop", "--autoplay-policy=no-user-gesture-required",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def test_spoken_request_in_the_browser_shows_the_tool_call_and_plays_the_answer(browser, agent_dir):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from speechlm.serve.app import create_app

    def wait(cond, timeout=240):
        return WebDriverWait(browser, timeout, poll_frequency=0.2).until(cond)

    with running_server(create_app(agent_dir)) as addr:
        browser.get(f"http://{addr}/")
        assert "speechlm" in browser.title
        talk = wait(EC.element_to_be_clickable((By.ID, "talk")), 60)  # enabled once the server said ready
        talk.click()
        try:
            wait(lambda d: d.execute_script("return window.demo.events.some(e => e.type === 'done')"))
        finally:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shot = ARTIFACTS / "serve_browser.png"
            browser.save_screenshot(str(shot))
            print(f"screenshot: {shot}")
            for entry in browser.get_log("browser"):
                print("browser console:", entry.get("level"), entry.get("message"))
        kinds = browser.execute_script("return window.demo.events.map(e => e.type)")
        assert "error" not in kinds, browser.execute_script("return window.demo.events")
        assert kinds.index("speech_started") < kinds.index("speech_stopped") < kinds.index("tool_call")

        calls = browser.find_elements(By.CSS_SELECTOR, "#calls li")
        assert len(calls) == 1, [c.text for c in calls]
        assert calls[0].find_element(By.TAG_NAME, "code").text == "lights(action=off, house_place=kitchen)"
        assert calls[0].get_attribute("class") == "ok" and "ok" in calls[0].find_element(By.CLASS_NAME, "result").text
        assert browser.find_element(By.ID, "answer").text == REQUESTS[0][4]
        changes = browser.find_element(By.ID, "changes").text
        assert "devices.lights.kitchen.on: true -> false" in changes, changes

        # the spoken answer: every chunk received was scheduled and has finished playing
        wait(lambda d: d.execute_script("const a = window.demo.audio; return a.received > 0 && a.played === a.received"),
             60)
        audio = browser.execute_script("return window.demo.audio")
        assert audio["seconds"] > 0.8, audio
        status = browser.find_element(By.ID, "audio-status")
        assert int(status.get_attribute("data-played")) == audio["received"]
        browser.save_screenshot(str(ARTIFACTS / "serve_browser.png"))  # the finished page


def test_typed_request_and_chosen_wav_in_the_browser(browser, agent_dir, request_wav, tmp_path):  # noqa: F811
    """The page's other inputs: typed words (the server speaks them for the e2e model) and a wav
    chosen in the file field (decoded and resampled by the page, sent whole, then committed)."""
    import soundfile as sf
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from speechlm.serve.app import create_app

    def wait(cond, timeout=240):
        return WebDriverWait(browser, timeout, poll_frequency=0.2).until(cond)

    def turn_done():
        wait(lambda d: d.execute_script("return window.demo.events.some(e => e.type === 'done')"))
        assert "error" not in browser.execute_script("return window.demo.events.map(e => e.type)")
        return browser.find_element(By.CSS_SELECTOR, "#calls li code").text, browser.find_element(By.ID, "answer").text

    with running_server(create_app(agent_dir)) as addr:
        # each request in a new session: the tiny model knows first requests only
        browser.get(f"http://{addr}/?session_id=typed-1")
        wait(EC.element_to_be_clickable((By.ID, "talk")), 60)
        browser.find_element(By.ID, "text").send_keys("wake me up at seven am")
        browser.find_element(By.CSS_SELECTOR, "#typed button").click()
        assert turn_done() == ("alarm(action=set, time=seven am)", REQUESTS[1][4])

        wav = tmp_path / "request16k.wav"  # what a user might drop: the request, 16 kHz, some silence around
        sf.write(str(wav), np.frombuffer(request_pcm(request_wav, 0.3, 0.5), dtype="<i2"), 16000, subtype="PCM_16")
        browser.get(f"http://{addr}/?session_id=file-1")
        wait(EC.element_to_be_clickable((By.ID, "talk")), 60)
        browser.find_element(By.ID, "file").send_keys(str(wav))
        assert turn_done() == ("lights(action=off, house_place=kitchen)", REQUESTS[0][4])
        kinds = browser.execute_script("return window.demo.events.map(e => e.type)")
        assert "speech_started" not in kinds and kinds[1] == "speech_stopped"  # the whole file, no detector
