"""The annotator app in a real headless Chromium (Playwright): open a ControlNet 1.1 tab (Lineart), upload a
photo, run, and read the map back from the gallery. Random weights of the real layout; screenshots go to
test-artifacts/."""
import io
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from annotator_weights import random_ckpt_dir
from apps_support import serving
from PIL import Image

from cldm.app.annotators import Annotators
from cldm.app.ui import build_annotator_demo

pytestmark = pytest.mark.browser
sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
TIMEOUT_MS = 60_000


@pytest.fixture
def page():
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is not installed")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(TIMEOUT_MS)
        yield page
        browser.close()


def test_lineart_tab_upload_run_and_read_the_map(page, shared_dir):
    photo = shared_dir / "test_imgs" / "house.png"
    if not photo.is_file():
        pytest.skip(f"{photo} not available")
    annotators = Annotators(ckpt_dir=random_ckpt_dir("sk_model.pth"))
    with serving(build_annotator_demo(annotators)) as url:
        page.goto(url, wait_until="networkidle")
        page.get_by_role("tab", name="Lineart", exact=True).click()
        page.locator("#input_image_lineart input[type=file]").set_input_files(str(photo))
        page.locator("#input_image_lineart img").first.wait_for()
        page.locator("#run_lineart").click()
        image = page.locator("#gallery_lineart img").first
        try:
            image.wait_for()
        except sync_api.TimeoutError:
            page.screenshot(path=str(ARTIFACTS / "annotator_lineart_timeout.png"), full_page=True)
            pytest.fail(f"no map before the timeout; toasts: {page.locator('.toast-body').all_inner_texts()}")
        src = image.get_attribute("src")
        with urllib.request.urlopen(src if src.startswith("http") else url.rstrip("/") + src) as response:
            line = np.asarray(Image.open(io.BytesIO(response.read())))
        page.screenshot(path=str(ARTIFACTS / "annotator_lineart.png"), full_page=True)
    assert line.ndim == 2 or (line[..., 0] == line[..., 1]).all()  # one grey channel
    assert min(line.shape[:2]) == 512 and len(np.unique(line)) > 10  # resolution slider default, a real map
