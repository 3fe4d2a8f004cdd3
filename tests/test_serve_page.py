"""The page at `/` in a real headless browser (Debian's chromium and chromedriver, driven by Selenium): a
Fashion-MNIST-style image uploaded through the page shows `resnet predict`'s top-1, and a detector's page draws
as many boxes as the JSON has above the page's threshold. Skipped only where chromium or chromedriver is absent
(.ci/run installs Debian's `chromium` and `chromium-driver`)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from serve_helpers import ServerThread, detector_and_scene, fashion_checkpoint, fashion_image, png_bytes

from resnet.cli import main
from resnet.serve.app import app_from_settings

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
pytestmark = pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
                                reason="Debian's chromium and chromium-driver are not installed")
OPTIONS = dict(device="cpu", protocol="center", engine="torch-fp32", score_threshold=0.0, max_batch=8, max_wait_ms=5,
               max_queue=64, max_bytes=1_000_000, max_pixels=1_000_000, max_images=4, timeout=20, token=None)


def browser(tmp_path: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1100,800"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def wait_for(condition, seconds: float = 30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("the page did not show the result in time")


def upload(driver, url: str, image: Path) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url + "/")
    wait_for(lambda: "loading" not in driver.find_element(By.ID, "model-name").text)
    driver.find_element(By.ID, "file").send_keys(str(image))


def test_the_page_shows_predicts_top1(tmp_path, capsys):
    from selenium.webdriver.common.by import By

    checkpoint = fashion_checkpoint(tmp_path / "fashion.safetensors")
    image = tmp_path / "garment.png"
    image.write_bytes(png_bytes(fashion_image(7)))
    assert main(["predict", "--checkpoint", str(checkpoint), str(image), "--json", "--no-amp"]) == 0
    expected = json.loads(capsys.readouterr().out)[0]["top"]
    app = app_from_settings({**OPTIONS, "checkpoint": str(checkpoint)}, load_now=True)
    with ServerThread(app) as url:
        driver = browser(tmp_path)
        try:
            upload(driver, url, image)
            shown = wait_for(lambda: driver.find_element(By.ID, "top1").text)
            assert shown == expected[0]["class"]
            bars = driver.find_elements(By.CSS_SELECTOR, "#bars .row")
            assert [b.find_element(By.CLASS_NAME, "name").text for b in bars] == [t["class"] for t in expected]
            assert "resnet20" in driver.find_element(By.ID, "model-name").text
            assert "T-shirt/top" in driver.find_element(By.ID, "card-list").text
            assert "latency" in driver.find_element(By.ID, "latency").text
        finally:
            driver.quit()


def test_the_detector_page_draws_the_boxes_above_its_threshold(tmp_path, capsys):
    from selenium.webdriver.common.by import By

    path, scene = detector_and_scene(tmp_path)
    assert main(["predict", str(scene), "--checkpoint", str(path), "--json", "--score-threshold", "0"]) == 0
    detections = json.loads(capsys.readouterr().out)[0]["detections"]
    app = app_from_settings({**OPTIONS, "checkpoint": str(path)}, load_now=True)
    with ServerThread(app) as url:
        driver = browser(tmp_path)
        try:
            upload(driver, url, scene)
            canvas = driver.find_element(By.ID, "canvas")
            drawn = wait_for(lambda: canvas.get_attribute("data-boxes"))
            assert int(drawn) == sum(d["score"] >= 0.5 for d in detections)
            cut = sorted(d["score"] for d in detections)[len(detections) // 2]  # about half the boxes
            driver.execute_script("const s = document.getElementById('threshold'); s.value = arguments[0];"
                                  "s.dispatchEvent(new Event('input'));", str(cut))
            shown = float(driver.execute_script("return document.getElementById('threshold').value"))  # step 0.05
            assert int(canvas.get_attribute("data-boxes")) == sum(d["score"] >= shown for d in detections)
            assert int(canvas.get_attribute("data-boxes")) > 0
            assert driver.execute_script("return document.getElementById('canvas').width") == 64
        finally:
            driver.quit()

