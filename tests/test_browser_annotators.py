"""The annotator app in a real headless Chromium (Playwright): open a ControlNet 1.1 tab (Lineart), upload a
photo, run, and read the map back from the gallery. Random weights of the real layout; screenshots go to
test-artifacts/."""

import numpy as np
import pytest
from browser_support import ARTIFACTS, browser, image_at, page, sync_api  # noqa: F401 (fixtures)
from annotator_weights import random_ckpt_dir
from apps_support import serving

from cldm.app.annotators import Annotators
from cldm.app.ui import build_annotator_demo

pytestmark = pytest.mark.browser


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
        line = image_at(url, image.get_attribute("src"))
        page.screenshot(path=str(ARTIFACTS / "annotator_lineart.png"), full_page=True)
    assert line.ndim == 2 or (line[..., 0] == line[..., 1]).all()  # one grey channel
    assert min(line.shape[:2]) == 512 and len(np.unique(line)) > 10  # resolution slider default, a real map
