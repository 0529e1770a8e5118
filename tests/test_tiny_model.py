"""The shipped tiny Fill50K ControlNet (models/tiny_fill50k.*): loads strictly, and its samples follow the hint.

Skipped when the weights file is absent (it is produced by ``python -m training.tiny_recipe``). The hints are the
first 8 held-out outlines of ``training.eval_fill`` (not hand-picked), sampled with 10 DDIM steps: a few seconds.
"""
import numpy as np
import pytest
from conftest import DEMO_WEIGHTS as WEIGHTS

# Issue 6 asks a test to check IoU >= 0.8 on a few fixed hints; the shipped model scores 0.84 on these 8 (10 DDIM
# steps, guidance 2; models/tiny_fill50k.md has the 100-hint figures). A broken loader or sampler scores ~0.15.
ISSUE_TARGET_IOU = 0.8

pytestmark = pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"{WEIGHTS.name} absent (run training.tiny_recipe)")


@pytest.fixture(scope="module")
def tiny_model(demo_model):
    return demo_model


@pytest.fixture(scope="module")
def scores(tiny_model):
    from training.eval_fill import evaluate

    return evaluate(tiny_model, n=8, steps=10)


def test_weights_are_small_and_complete(tiny_model):
    from cldm.model import load_checkpoint

    assert WEIGHTS.stat().st_size < 20e6
    # the full ControlLDM: VAE, text tower, UNet and ControlNet, nothing left at initial values
    assert load_checkpoint(tiny_model, str(WEIGHTS)).missing == []


def test_samples_fill_the_outline(scores):
    assert scores["iou"] >= ISSUE_TARGET_IOU, scores


def test_hint_moves_the_circle(tiny_model):
    """Two different outlines with the same prompt and noise give different images, each closer to its own
    outline's disc than to the other's."""
    from training.eval_fill import disc_mask, generate, heldout, native_size, nearer_circle_colour

    size = native_size(tiny_model)
    data = heldout(8, size)
    a, b = 0, 1
    images = generate(tiny_model, data.hints[[a, b]], [data.prompts[a]] * 2, [7, 7], steps=10)
    assert not np.array_equal(images[0], images[1])

    def circle_mask(image):  # in the prompt's colours (circle a's)
        return nearer_circle_colour(image, data.circles[a])

    def iou(pred, truth):
        return (pred & truth).sum() / max(1, (pred | truth).sum())

    disc_a, disc_b = disc_mask(data.circles[a], size), disc_mask(data.circles[b], size)
    assert iou(circle_mask(images[0]), disc_a) > iou(circle_mask(images[0]), disc_b)
    assert iou(circle_mask(images[1]), disc_b) > iou(circle_mask(images[1]), disc_a)
