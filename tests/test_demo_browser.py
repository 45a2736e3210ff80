"""``diffuse demo`` in a real headless browser (Debian's chromium + chromedriver through selenium):
the page loads, a sample is produced and shown, a bad input shows its one message. Skips where
Gradio, selenium or the browser is not installed (``pip install -e ".[demo]" selenium`` and
``apt-get install chromium chromium-driver``)."""

from __future__ import annotations

import shutil
import socket
import time

import pytest

gr = pytest.importorskip("gradio")
webdriver = pytest.importorskip("selenium.webdriver")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="no chromium + chromedriver installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def page_url():
    from diffuse.cli.demo import build_demo

    port = _free_port()
    app = build_demo(["image", "molecules"], device="cpu").queue()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, show_error=True)
    yield f"http://127.0.0.1:{port}/"
    app.close()


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1200"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield driver
    driver.quit()


def _wait(predicate, timeout=120.0):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError("timed out waiting for the page")


def _set(browser, elem_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = browser.find_element(By.CSS_SELECTOR, f"#{elem_id} input")
    box.click()
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.BACKSPACE)
    box.send_keys(value)
    box.send_keys(Keys.ENTER)


def test_the_page_samples_and_reports_a_bad_input(page_url, browser, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(page_url)
    _wait(lambda: browser.find_elements(By.ID, "sample"))
    assert "diffuse: sample a model" in browser.page_source
    _set(browser, "num", "2")
    _set(browser, "steps", "3")
    browser.find_element(By.CSS_SELECTOR, "#sample").click()
    _wait(lambda: "2 samples of image" in browser.find_element(By.ID, "status").text)
    images = _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#gallery img"))
    assert len(images) >= 2                           # the grid and the samples, shown on the page
    browser.save_screenshot(str(tmp_path / "sampled.png"))

    _set(browser, "steps", "-3")                      # a bad input: one message, nothing drawn
    browser.find_element(By.CSS_SELECTOR, "#sample").click()
    def error_text() -> str:
        text = browser.find_element(By.ID, "status").text
        return text if "error:" in text else ""

    text = _wait(error_text)
    browser.save_screenshot(str(tmp_path / "bad-input.png"))
    assert "steps" in text and "Traceback" not in browser.page_source
