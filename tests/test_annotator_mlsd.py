"""M-LSD: exact line decoding from a synthetic net output, and the detector end to end."""
import numpy as np
import pytest
import torch

from annotator.mlsd import MLSDdetector, decode_lines
from tests.annotator_weights import load_test_image, random_ckpt_dir


def _tp_map(h=16, w=16):
    """Net output (9, h, w) with one confident centre at row 5, col 7: start (-3, 0), end (+3, +0.6)."""
    tp = torch.full((9, h, w), -10.0)
    tp[1:] = 0.0
    tp[0, 5, 7] = 2.0  # sigmoid = 0.8808
    tp[1:5, 5, 7] = torch.tensor([-3.0, 0.0, 3.0, 0.6])
    return tp


def test_decode_lines_exact_endpoints_in_input_pixels():
    lines = decode_lines(_tp_map(), value_threshold=0.1, distance_threshold=0.1)
    expected = 2 * (np.array([7, 5, 7, 5]) + np.array([-3.0, 0.0, 3.0, 0.6], np.float32).astype(np.float64))
    assert lines.dtype == np.float64 and lines.shape == (1, 4)
    assert lines[0].tolist() == expected.tolist()


def test_decode_lines_thresholds_are_strict():
    tp = _tp_map()
    assert len(decode_lines(tp, 0.88, 0.1)) == 1 and len(decode_lines(tp, 0.89, 0.1)) == 0
    length = float(np.float32(np.sqrt(np.float32(6.0) ** 2 + np.float32(0.6) ** 2)))
    assert len(decode_lines(tp, 0.1, length - 1e-3)) == 1 and len(decode_lines(tp, 0.1, length)) == 0


def test_decode_lines_keeps_only_3x3_local_maxima():
    tp = _tp_map()
    tp[0, 5, 8] = 1.0  # weaker neighbour of the peak: suppressed
    tp[0, 12, 12] = 1.0  # separate peak with zero length: dropped by the distance test
    tp[1:5, 12, 12] = torch.tensor([-1.0, -1.0, 1.0, 1.0])  # now long enough
    lines = decode_lines(tp, 0.1, 0.1)
    assert sorted(map(tuple, (lines / 2).round().astype(int))) == [(4, 5, 10, 6), (11, 11, 13, 13)]


def test_decode_lines_small_map_and_no_line():
    tp = torch.zeros(9, 4, 4)  # 16 candidates (< 200), none long enough
    assert decode_lines(tp, 0.1, 0.1).shape == (0, 4)


@pytest.fixture(scope="module")
def mlsd():
    return MLSDdetector(ckpt_dir=random_ckpt_dir("mlsd_large_512_fp32.pth"))


def test_mlsd_end_to_end_draws_lines(mlsd):
    img = load_test_image("room.png", 128)
    lines = mlsd(img, 0.0, 0.0)  # random weights: accept everything so lines get drawn
    assert lines.shape == img.shape[:2] and lines.dtype == np.uint8
    assert set(np.unique(lines)) == {0, 255}
    assert (mlsd(img, 1.0, 0.0) == 0).all()  # no score exceeds 1: an empty map, no error


def test_mlsd_draws_decoded_lines_truncated(mlsd, monkeypatch):
    import annotator.mlsd as mlsd_module
    monkeypatch.setattr(mlsd_module, "decode_lines", lambda *a: np.array([[1.9, 2.9, 10.99, 2.1], [-0.5, 5, 3, 5]]))
    out = mlsd(np.zeros((16, 16, 3), np.uint8))
    assert np.nonzero(out[2])[0].tolist() == list(range(1, 11))  # (1, 2) -> (10, 2)
    assert np.nonzero(out[5])[0].tolist() == [0, 1, 2, 3]  # -0.5 truncates toward zero


@pytest.mark.parametrize("shape", [(40, 64, 3), (0, 64, 3), (8, 8, 3)])
def test_mlsd_rejects_sizes_the_decoder_cannot_take(mlsd, shape):
    with pytest.raises(ValueError, match="divisible by 16|too small"):
        mlsd(np.zeros(shape, np.uint8))
