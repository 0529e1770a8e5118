"""The apps in a real headless Chromium (Playwright): upload and run the Canny app, draw on the interactive
scribble canvas. Screenshots go to test-artifacts/ for a human to look at."""

import numpy as np
import pytest
from browser_support import ARTIFACTS, browser, gallery_image, page  # noqa: F401 (fixtures)
from apps_support import open_advanced_options, serving, set_number, tiny_checkpoint, tiny_engine, wait_for_gallery
from conftest import TINY_CLDM

from cldm.app.annotators import Annotators
from cldm.app.engine import Engine
from cldm.app.tasks import TASKS
from cldm.app.ui import build_demo
from cldm.app.weights import resolve_model

pytestmark = pytest.mark.browser


def test_canny_app_upload_prompt_two_images(page, shared_dir, tmp_path):
    """Without control_sd15_canny.pth the (here: tiny test) demo model runs, and the banner says so."""
    dog = shared_dir / "test_imgs" / "dog.png"
    if not dog.is_file():
        pytest.skip(f"{dog} not available")
    choice = resolve_model("canny", [tmp_path / "control_sd15_canny.pth"], demo_config=TINY_CLDM,
                           demo_weights=tiny_checkpoint())
    engine = Engine(tiny_engine().model, banner=choice.banner)
    with serving(build_demo(TASKS["canny"], engine, Annotators())) as url:
        page.goto(url, wait_until="networkidle")
        assert "Running the bundled tiny demo model" in page.locator("#banner").inner_text()
        page.locator("#run").click()  # no image yet: a visible error, and the page keeps working
        page.get_by_text("No input image: upload one first.").wait_for()
        page.get_by_test_id("toast-close").click()
        page.locator("#input_image input[type=file]").set_input_files(str(dog))
        page.locator("#input_image img").first.wait_for()  # uploaded and shown: a Run before that finds no image
        page.locator("#prompt textarea").fill("a dog on the grass")
        open_advanced_options(page)
        set_number(page, "Images", "2")
        set_number(page, "Steps", "3")  # the default 20 only costs time here
        page.locator("#run").click()
        wait_for_gallery(page, 3, ARTIFACTS / "canny_app_timeout.png")
        assert page.locator("#gallery img").count() == 3
        edges = gallery_image(page, url, 0)  # inverted Canny map: black edges on white
        assert edges.min() == 0 and np.median(edges) == 255
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(ARTIFACTS / "canny_app.png"), full_page=True)


def test_interactive_scribble_canvas_draw_and_run(page):
    with serving(build_demo(TASKS["scribble_interactive"], tiny_engine(), Annotators())) as url:
        page.goto(url, wait_until="networkidle")
        page.get_by_role("button", name="Open drawing canvas!").click()
        page.wait_for_load_state("networkidle")  # the canvas is rebuilt at its new size
        page.locator("#sketch button[aria-label='Brush']").click()
        page.wait_for_timeout(500)  # strokes drawn before the brush is live are lost on a busy machine
        box = page.locator("#sketch canvas").first.bounding_box()
        cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        for dy in (-50, 50):  # two horizontal strokes inside the centred drawing area (few moves: each re-renders)
            page.mouse.move(cx - 100, cy + dy)
            page.mouse.down()
            page.mouse.move(cx + 100, cy + dy, steps=4)
            page.mouse.up()
        page.locator("#prompt textarea").fill("two shelves")
        open_advanced_options(page)
        set_number(page, "Steps", "3")
        page.locator("#run").click()
        wait_for_gallery(page, 2, ARTIFACTS / "scribble_app_timeout.png")
        scribble = gallery_image(page, url, 0)  # the strokes, shown black on white
        assert 0 < (scribble < 128).mean() < 0.2
        page.screenshot(path=str(ARTIFACTS / "scribble_interactive_app.png"), full_page=True)
