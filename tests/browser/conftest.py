"""Browser fixtures: a real Label Studio (see tests/e2e/labelstudio_server.py) and headless Chromium."""
import shutil
import tempfile

import pytest

from tests.e2e.labelstudio_server import label_studio  # noqa: F401  (re-exported as a fixture)

CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,900"]
"""Headless, and nothing that phones home (a closed network otherwise fills the log with retries)."""


@pytest.fixture
def chrome():
    """Selenium driving Debian's ``chromium`` + ``chromium-driver`` (apt-get install; .ci/run does it)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (requirements.txt)")
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("needs Debian's chromium and chromium-driver: apt-get install -y chromium chromium-driver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    with tempfile.TemporaryDirectory(prefix="wtd-chromium-") as profile:
        options.add_argument(f"--user-data-dir={profile}")
        drv = webdriver.Chrome(service=Service(driver), options=options)
        try:
            yield drv
        finally:
            drv.quit()
