"""Open the report in headless Chromium: no console errors, sorting by a header click works, a screenshot."""

import shutil
from pathlib import Path

import pytest

from deploybench.report import build_report

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER), reason="needs Debian's chromium + chromium-driver (make test installs them as root)"
)


def test_report_in_headless_chromium(report_workspace, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    out = build_report(report_workspace, tmp_path / "index.html")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1400,1000",
    ]:
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    try:
        driver.get(out.as_uri())
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        table = driver.find_element(By.ID, "variants")
        header = table.find_elements(By.CSS_SELECTOR, "thead th")[10]  # p50 ms
        assert header.text == "p50 ms"
        column = lambda: [
            float(r.find_elements(By.TAG_NAME, "td")[10].text)  # noqa: E731
            for r in table.find_elements(By.CSS_SELECTOR, "tbody tr")
        ]
        header.click()
        assert column() == sorted(column())
        header.click()
        assert column() == sorted(column(), reverse=True)
        assert driver.execute_script("return document.title") == "deploybench report"
        shot = Path("reports") / "screenshots"
        shot.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(tmp_path / "report.png"))
        shutil.copy(tmp_path / "report.png", shot / "browser-test.png")
        assert driver.get_log("browser") == [] or all(e["level"] != "SEVERE" for e in driver.get_log("browser"))
    finally:
        driver.quit()
