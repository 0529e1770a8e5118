"""Each controllability condition of cldm.evaluate through its real detector class (random stand-in weights,
tests/annotator_weights.py): control map shape, a re-extraction from the same image agreeing perfectly, and a
score from another image in range. (seg's UniFormer takes ~20 s here; its label lookup is tested in
test_eval_metrics.py.)"""
import math

import numpy as np
import pytest

from cldm.app.annotators import Annotators
from cldm.eval_conditions import CONDITIONS
from tests.annotator_weights import random_ckpt_dir

WEIGHTS = {"hed": "ControlNetHED.pth", "softedge": "table5_pidinet.pth", "lineart": "sk_model.pth",
           "depth": "dpt_hybrid-midas-501f0c75.pt", "pose": "body_pose_model.pth"}
PERFECT = {"ssim": 1.0, "rmse": 0.0, "pck": 1.0}


@pytest.mark.parametrize("name", list(WEIGHTS))
def test_condition_runs_on_its_detector(name):
    rng = np.random.default_rng(0)
    real, generated = (rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2))
    annotators = Annotators("cpu", random_ckpt_dir(WEIGHTS[name]))
    cond = CONDITIONS[name]
    control, reference = cond.reference(annotators, real)
    assert control.shape == (64, 64, 3) and control.dtype == np.uint8
    again, measured = cond.reextract(annotators, real, reference)
    assert np.array_equal(again, control)
    key = cond.metrics[0]
    assert cond.score(reference, measured) == {key: PERFECT[key]}
    other = cond.score(reference, cond.reextract(annotators, generated, reference)[1])[key]
    assert math.isfinite(other) and other != PERFECT[key]
    assert (0.0 <= other <= 255.0) if key == "rmse" else (-1.0 <= other <= 1.0)
    if name == "lineart":  # the 1.1 lineart ControlNet reads the inverted map
        assert np.array_equal(control[..., 0], 255 - reference)
