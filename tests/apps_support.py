"""Helpers shared by the app tests: a tiny model saved as a real checkpoint, in-process serving, call arguments,
and the browser tests' page steps."""
import atexit
import contextlib
import functools
import shutil
import socket
import tempfile
from pathlib import Path

import pytest
from conftest import TINY_CLDM, build_tiny, randomize_zero_convs

from cldm.app.engine import Engine
from cldm.app.tasks import Task
from cldm.app.ui import launch
from cldm.app.weights import ModelChoice
from cldm.model import save_state_dict

ROOT_SCRIPTS = sorted(p.name for p in Path(__file__).resolve().parents[1].glob("gradio_*.py"))
# Fast settings: 64 px output (the tiny model's native size), 2 DDIM steps, the smallest detect resolution.
FAST = dict(prompt="a dog", num_samples=2, image_resolution=64, control_mode="Balanced", ddim_steps=2, scale=9.0, seed=1,
            eta=0.0, added_prompt="best quality", negative_prompt="lowres", strength=1.0, control_start=0.0,
            control_end=1.0)
DETECT_RESOLUTION = 128


@functools.lru_cache(maxsize=None)
def tiny_checkpoint() -> Path:
    """A tiny ControlLDM with random weights (zero convs randomised, so the control matters) as a file."""
    folder = Path(tempfile.mkdtemp(prefix="app-ckpt-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = folder / "control_tiny.safetensors"
    save_state_dict(randomize_zero_convs(build_tiny()).state_dict(), str(path))
    return path


@functools.lru_cache(maxsize=None)
def tiny_engine() -> Engine:
    """The tiny model loaded the way the apps load models, with a second ControlNet for the multi app."""
    return Engine.load(ModelChoice(Path(TINY_CLDM), (tiny_checkpoint(), tiny_checkpoint())))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(demo):
    """Serve `demo` on a free local port for the duration of the block; yields its URL."""
    _, url, _ = launch(demo, port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        yield url
    finally:
        demo.close()


def client_for(url, download_dir):
    from gradio_client import Client
    return Client(url, verbose=False, analytics_enabled=False, download_files=str(download_dir))


def task_kwargs(task: Task, input_image, **overrides) -> dict:
    """Keyword arguments of a diffusion app's /run endpoint: FAST settings and the task's defaults unless
    overridden (detectors at their smallest resolution)."""
    values = {"input_image": input_image, **FAST, **task.default_options()}
    if "detect_resolution" in values:
        values["detect_resolution"] = DETECT_RESOLUTION
    return {**values, **overrides}


def open_advanced_options(page) -> None:
    """Open the app's "Advanced options" accordion (Playwright page) and wait until its last control shows."""
    page.get_by_text("Advanced options").click()
    page.get_by_label("Negative Prompt").wait_for()


def set_number(page, label: str, value: str, attempts: int = 3) -> None:
    """Type ``value`` into a slider's number box and leave it, then check the app kept it. A value typed while
    the accordion is still mounting can be reset to the default (seen on CI and on a busy machine: 1 image
    instead of 2), so the value is typed again, a few times, until it holds."""
    from playwright.sync_api import expect
    box = page.get_by_label(f"number input for {label}")
    for _ in range(attempts - 1):
        box.fill(value)
        box.press("Tab")
        try:
            expect(box).to_have_value(value, timeout=2000)
            return
        except AssertionError:
            continue
    box.fill(value)
    box.press("Tab")
    expect(box).to_have_value(value)


def wait_for_gallery(page, count: int, screenshot: Path) -> None:
    """Wait for ``count`` gallery images; on a timeout fail with what the page shows (toasts, images so far) and
    a screenshot, so that a failure on a busy CI machine can be told apart from an app error."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    try:
        page.locator("#gallery img").nth(count - 1).wait_for()
    except PlaywrightTimeout:
        page.screenshot(path=str(screenshot), full_page=True)
        pytest.fail(f"{page.locator('#gallery img').count()} of {count} gallery images before the page timeout; "
                    f"toasts: {page.locator('.toast-body').all_inner_texts()}; screenshot: {screenshot}")
