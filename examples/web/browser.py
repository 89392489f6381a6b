"""Drive the page in headless Chromium (the system's chromium and chromedriver, through
selenium): used by tests/test_web_example.py and by screenshot.py.

Nothing is downloaded: the browser and its driver are the Debian packages
``chromium`` and ``chromium-driver`` (``.ci/run`` installs them).
"""

from __future__ import annotations

import shutil
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from serve import make_server

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
DRIVER_NAMES = ("chromedriver",)


def find_chromium() -> tuple[Optional[str], Optional[str]]:
    """The browser and its driver on PATH (or None for whichever is missing)."""
    browser = next((path for path in map(shutil.which, CHROMIUM_NAMES) if path), None)
    driver = next((path for path in map(shutil.which, DRIVER_NAMES) if path), None)
    return browser, driver


@contextmanager
def served(model_dir: Path) -> Iterator[str]:
    """The page's URL while a loopback server serves it with MODEL_DIR as /model/."""
    server = make_server(model_dir)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def headless_chromium(width: int = 1200, height: int = 900):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = find_chromium()
    if browser is None or driver_path is None:
        raise RuntimeError("chromium and chromedriver must be on PATH (Debian: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={width},{height}", "--no-first-run", "--disable-extensions"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for_calls(driver, calls: int, timeout: float = 120.0) -> None:
    """Until the page has finished CALLS calls (or shows an error)."""
    from selenium.webdriver.support.ui import WebDriverWait

    def finished(d):
        state = d.execute_script("const s = document.getElementById('status'); return [s.dataset.state, s.dataset.calls, s.textContent];")
        if state[0] == "error":
            raise RuntimeError(f"the page failed: {state[2]}")
        return state[0] == "done" and int(state[1]) >= calls

    WebDriverWait(driver, timeout, poll_frequency=0.1).until(finished)


def open_page(driver, url: str, timeout: float = 120.0) -> None:
    """Load the page and wait for its first call (at the file's default ratio)."""
    driver.get(url)
    wait_for_calls(driver, 1, timeout)


def set_text_and_ratio(driver, text: Optional[str], keep_ratio: float, timeout: float = 120.0) -> None:
    """Type TEXT (if given) and move the slider to KEEP_RATIO as a user would (input events), then wait."""
    calls = int(driver.execute_script("return document.getElementById('status').dataset.calls"))
    driver.execute_script(
        """
        const [text, ratio] = arguments;
        if (text !== null) document.getElementById('text').value = text;
        const slider = document.getElementById('keep-ratio');
        slider.value = String(ratio);
        slider.dispatchEvent(new Event('input', { bubbles: true }));
        """,
        text, keep_ratio,
    )
    from selenium.webdriver.support.ui import WebDriverWait

    wait_for_calls(driver, calls + 1, timeout)
    WebDriverWait(driver, timeout, poll_frequency=0.1).until(
        lambda d: d.execute_script("const s = document.getElementById('status'); return s.dataset.state === 'done' "
                                   "&& Number(s.dataset.keepRatio) === arguments[0];", keep_ratio))


def read_page(driver) -> dict:
    """What the page shows: the label, each label's score, the tokens, and the highlighted
    positions of each layer's row (read from the DOM, not from the page's JavaScript state)."""
    return driver.execute_script(
        """
        const rows = [...document.querySelectorAll('#kept .layer[data-layer]')];
        return {
          label: document.getElementById('label').textContent,
          latency: document.getElementById('latency').textContent,
          scores: Object.fromEntries([...document.querySelectorAll('#scores tr')].map(
            (row) => [row.dataset.label, Number(row.dataset.score)])),
          tokens: [...document.querySelectorAll('#kept .layer.input .token')].map((t) => t.textContent),
          kept: rows.map((row) => [...row.querySelectorAll('.token.kept')].map((t) => Number(t.dataset.position))),
          ids: window.latexportLast.ids,
        };
        """
    )
