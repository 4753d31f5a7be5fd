"""`deploybench app` in headless Chromium: upload a PNG, choose two variants, predict, compare the top-1 shown with
the suite's; a text file gets a message; a screenshot for the docs."""

import shutil
from pathlib import Path

import pytest

from conftest import suite_top1

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER), reason="needs Debian's chromium + chromium-driver (make test installs them as root)"
)
WAIT_S = 30


@pytest.fixture
def driver(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

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
        "--window-size=1200,1400",
    ]:
        opts.add_argument(flag)
    d = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    try:
        yield d
    finally:
        d.quit()


def _open(driver, url, ids):
    """Load the app, choose the variants `ids` from the dropdown (by clicking their options)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    wait = WebDriverWait(driver, WAIT_S)
    # the page's load events refresh the dropdowns from the store: choose only once they are done
    wait.until(
        lambda d: (
            d.find_elements(By.CSS_SELECTOR, "#predict-variants")
            and not d.find_elements(By.CSS_SELECTOR, "[data-testid='status-tracker']:not(.hide)")
        )
    )
    box = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#predict-variants input")))
    for vid in ids:
        # the option list stays open after a choice, and may then cover the box: click the box only to open it
        if not driver.find_elements(By.CSS_SELECTOR, "li[data-testid='dropdown-option']"):
            box.click()
        option = wait.until(
            ec.element_to_be_clickable(
                (By.CSS_SELECTOR, f"li[data-testid='dropdown-option'][aria-label$='{vid[:10]}']")
            )
        )
        option.click()
    driver.find_element(By.TAG_NAME, "h1").click()  # close the option list, which would swallow the next click
    wait.until(ec.invisibility_of_element_located((By.CSS_SELECTOR, "li[data-testid='dropdown-option']")))
    return wait


def _upload(driver, wait, path: Path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#predict-upload input[type=file]"))).send_keys(
        str(path)
    )
    # the file's row appears once the upload is done (its name may be split into stem and extension)
    wait.until(lambda d: path.stem in "".join(d.find_element(By.ID, "predict-upload").text.split()))
    driver.find_element(By.ID, "predict-button").click()


def save_screenshot(driver, path: Path, margin_px: int = 24) -> None:
    """The page from its title down to the predictions shown, as a PNG at `path`: the results scrolled into view
    first, the empty rest of the window below them cut off (the docs' image of the app is made with this)."""
    from PIL import Image
    from selenium.webdriver.common.by import By

    results = driver.find_element(By.ID, "predict-results")
    driver.execute_script("window.scrollTo(0, 0); arguments[0].scrollIntoView({block: 'nearest'});", results)
    png = path.with_suffix(".window.png")
    assert driver.save_screenshot(str(png))
    # element rectangles are in CSS pixels; the screenshot may be scaled (devicePixelRatio)
    scale = driver.execute_script("return window.devicePixelRatio") or 1
    top = driver.execute_script("return window.scrollY")
    bottom = results.rect["y"] - top + results.rect["height"] + margin_px
    with Image.open(png) as window:
        window.crop((0, 0, window.width, min(window.height, round(bottom * scale)))).save(path, optimize=True)
    png.unlink()


def test_predict_in_headless_chromium(driver, app_url, app_workspace, test_png, text_file, tmp_path):
    root, trained, onnx, _ = app_workspace
    try:
        _predict_png_and_text(driver, app_url, root, trained, onnx, test_png, text_file, tmp_path)
    except Exception:
        driver.save_screenshot(str(tmp_path / "failure.png"))  # what the page showed, next to pytest's tmp files
        raise


def _predict_png_and_text(driver, app_url, root, trained, onnx, test_png, text_file, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    wait = _open(driver, app_url, [trained, onnx])
    _upload(driver, wait, test_png)
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#predict-results .db-top1")))
    shown = {
        el.get_attribute("data-variant"): el.find_element(By.CLASS_NAME, "db-top1").text
        for el in driver.find_elements(By.CSS_SELECTOR, "#predict-results .db-variant")
    }
    assert shown == {vid: suite_top1(root, vid, test_png) for vid in (trained, onnx)}
    shot = Path("reports") / "screenshots"
    shot.mkdir(parents=True, exist_ok=True)
    save_screenshot(driver, tmp_path / "app.png")
    shutil.copy(tmp_path / "app.png", shot / "app.png")

    wait = _open(driver, app_url, [trained])
    _upload(driver, wait, text_file)
    wait.until(ec.text_to_be_present_in_element((By.ID, "predict-message"), "not an image"))
    assert driver.find_elements(By.CSS_SELECTOR, "#predict-results .db-top1") == []
