"""What the browser tests share: Debian's Chromium driven by Playwright, one browser per test module, a page per
test, and reading an image back from a gallery. Import the fixtures into a test module to use them."""
import io
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"  # screenshots for a human to look at
TIMEOUT_MS = 60_000  # generous: the machine running the tests may be busy


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is not installed")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)
    yield page
    page.close()


def image_at(url: str, src: str) -> np.ndarray:
    """The image an <img src> of the app at ``url`` shows, as an array (its own mode)."""
    with urllib.request.urlopen(src if src.startswith("http") else url.rstrip("/") + src) as response:
        return np.asarray(Image.open(io.BytesIO(response.read())))


def gallery_image(page, url: str, index: int, gallery: str = "#gallery") -> np.ndarray:
    """Image ``index`` of the gallery, as RGB."""
    image = image_at(url, page.locator(f"{gallery} img").nth(index).get_attribute("src"))
    return np.asarray(Image.fromarray(image).convert("RGB"))
