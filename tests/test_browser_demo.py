"""The README's main command on a fresh checkout: the interactive scribble app on the bundled tiny Fill50K
model. A real Chromium draws a circle on the canvas, asks for two colours, and the sample must be a disc of
the first colour where the circle was drawn, on the second colour."""
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from apps_support import free_port, open_advanced_options, set_number, wait_for_gallery
from browser_support import ARGS, CHROMIUM, gallery_image, sync_api
from PIL import Image

from cldm.app.weights import DEMO_WEIGHTS, default_checkpoint
from training.fill50k import parse_prompt

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "red circle with blue background"


@pytest.fixture(scope="module")
def demo_app_url():
    """`python gradio_scribble2image_interactive.py` exactly as the README runs it, on a free port."""
    if not DEMO_WEIGHTS.is_file():
        pytest.skip("the bundled demo model is not in models/")
    if default_checkpoint("scribble").is_file():
        pytest.skip("a real control_sd15_scribble.pth is installed: the app would run it, not the demo model")
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is not installed")
    port = free_port()
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    app = subprocess.Popen([sys.executable, "gradio_scribble2image_interactive.py", "--port", str(port),
                            "--device", "cpu"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if app.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the demo app did not start:\n" + app.stdout.read().decode(errors="replace"))
                time.sleep(0.5)
        yield url
    finally:
        app.terminate()
        app.wait(timeout=30)


def drawn_disc(scribble_map: np.ndarray) -> np.ndarray:
    """Inside of the drawn closed stroke (the map shows strokes black on white): flood the outside from a corner."""
    strokes = (scribble_map.min(axis=2) < 128).astype(np.uint8)
    outside = strokes.copy()
    cv2.floodFill(outside, None, (0, 0), 2)
    return outside != 2  # stroke + inside


def test_readme_demo_draws_the_prompted_circle(demo_app_url, tmp_path):
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(120_000)
        page.goto(demo_app_url, wait_until="networkidle")
        assert "tiny demo model" in page.locator("#banner").inner_text()
        page.get_by_role("button", name="Open drawing canvas!").click()
        page.wait_for_load_state("networkidle")  # the canvas is rebuilt at its new size
        page.locator("#sketch button[aria-label='Brush']").click()
        page.wait_for_timeout(500)  # strokes drawn before the brush is live are lost on a busy machine
        box = page.locator("#sketch canvas").first.bounding_box()
        cx, cy, r = box["x"] + box["width"] / 2 - 25, box["y"] + box["height"] / 2 + 15, 70
        angles = np.linspace(0, 2 * np.pi, 41)
        page.mouse.move(cx + r, cy)
        page.mouse.down()
        for a in angles[1:]:
            page.mouse.move(cx + r * np.cos(a), cy + r * np.sin(a))
        page.mouse.up()
        page.locator("#prompt textarea").fill(PROMPT)
        open_advanced_options(page)
        set_number(page, "Seed", "7")
        page.locator("#run").click()
        wait_for_gallery(page, 2, artifacts / "demo_scribble_circle_timeout.png")
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(artifacts / "demo_scribble_circle.png"), full_page=True)
        scribble, sample = gallery_image(page, demo_app_url, 0), gallery_image(page, demo_app_url, 1)
        browser.close()

    disc = drawn_disc(scribble)
    assert 0.05 < disc.mean() < 0.6, "the drawn circle should enclose a sizeable part of the canvas"
    circle_rgb, background_rgb = (np.array(c, np.float32) for c in parse_prompt(PROMPT))
    disc = cv2.resize(disc.astype(np.uint8), sample.shape[1::-1], interpolation=cv2.INTER_NEAREST).astype(bool)
    pixels = sample.astype(np.float32)
    is_circle = np.linalg.norm(pixels - circle_rgb, axis=2) < np.linalg.norm(pixels - background_rgb, axis=2)
    iou = (is_circle & disc).sum() / (is_circle | disc).sum()
    Image.fromarray(sample).save(tmp_path / "sample.png")
    assert iou >= 0.7, f"circle IoU {iou:.2f} (sample in {tmp_path})"
