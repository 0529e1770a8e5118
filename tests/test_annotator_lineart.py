"""Lineart (sk_model / sk_model2) and lineart anime (netG): real key layouts, loading, outputs."""
import numpy as np
import pytest
import torch

from annotator.lineart import COARSE_WEIGHTS, FINE_WEIGHTS, LineartDetector
from annotator.lineart.model import LineartGenerator
from annotator.lineart_anime import WEIGHTS as ANIME_WEIGHTS
from annotator.lineart_anime import LineartAnimeDetector
from annotator.lineart_anime.model import AnimeLineartUNet
from annotator.util import BadWeightsError, MissingWeightsError
from tests.annotator_weights import load_test_image, make_random_weights, manifest, random_ckpt_dir


def _layout(net_class, prefix=""):
    with torch.device("meta"):
        net = net_class()
    return {prefix + k: list(v.shape) for k, v in net.state_dict().items()}


@pytest.mark.parametrize("net_class, name, prefix", [(LineartGenerator, FINE_WEIGHTS, ""),
                                                     (LineartGenerator, COARSE_WEIGHTS, ""),
                                                     (AnimeLineartUNet, ANIME_WEIGHTS, "module.")])
def test_module_matches_the_real_layout(net_class, name, prefix):
    assert _layout(net_class, prefix) == manifest(name)


def _check_map(edge, img):
    assert edge.shape == img.shape[:2] and edge.dtype == np.uint8
    assert len(np.unique(edge)) > 10  # a real map, not a constant


@pytest.mark.parametrize("coarse", [False, True])
def test_lineart_end_to_end_and_deterministic(coarse):
    ckpts = random_ckpt_dir(FINE_WEIGHTS, COARSE_WEIGHTS)
    img = load_test_image("house.png", 64)
    detector = LineartDetector(ckpt_dir=ckpts)
    line = detector(img, coarse=coarse)
    _check_map(line, img)
    assert (line == detector(img, coarse=coarse)).all()
    assert (line == LineartDetector(ckpt_dir=ckpts)(img, coarse=coarse)).all()  # a fresh load: same weights


def test_lineart_loads_the_file_strictly_and_coarse_is_the_second_file(tmp_path):
    ckpts = tmp_path
    make_random_weights(FINE_WEIGHTS, ckpts, seed=0)
    make_random_weights(COARSE_WEIGHTS, ckpts, seed=1)
    detector = LineartDetector(ckpt_dir=ckpts)
    for net, name in ((detector.net, FINE_WEIGHTS), (detector.coarse_net, COARSE_WEIGHTS)):
        state = torch.load(ckpts / name, weights_only=True)
        assert all(torch.equal(net.state_dict()[k].cpu(), v) for k, v in state.items())
    img = load_test_image("house.png", 64)
    assert not (detector(img) == detector(img, coarse=True)).all()


def test_lineart_odd_sizes_are_cropped_back():
    ckpts = random_ckpt_dir(FINE_WEIGHTS)
    img = np.random.default_rng(0).integers(0, 256, (37, 51, 3), dtype=np.uint8)
    assert LineartDetector(ckpt_dir=ckpts)(img).shape == (37, 51)


def test_lineart_coarse_file_missing_is_named(tmp_path):
    make_random_weights(FINE_WEIGHTS, tmp_path)
    img = np.zeros((32, 32, 3), np.uint8)
    LineartDetector(ckpt_dir=tmp_path)(img)  # the fine model alone is enough
    with pytest.raises(MissingWeightsError, match=r"sk_model2\.pth: download https://huggingface\.co/lllyasviel/"
                                                  r"Annotators/resolve/main/sk_model2\.pth and put it at "):
        LineartDetector(ckpt_dir=tmp_path)(img, coarse=True)


def test_lineart_anime_end_to_end_float64_and_deterministic():
    ckpts = random_ckpt_dir(ANIME_WEIGHTS)
    img = load_test_image("cute_robot.png", 64)  # 64 px: fed to the net at 256 x 256
    detector = LineartAnimeDetector(ckpt_dir=ckpts)
    sketch = detector(img)
    _check_map(sketch, img)
    assert (sketch == detector(img)).all()
    precise = LineartAnimeDetector(ckpt_dir=ckpts, dtype=torch.float64)(img)
    assert np.abs(sketch.astype(int) - precise).max() <= 1


@pytest.mark.parametrize("prefix", ["module.", ""])
def test_lineart_anime_accepts_the_file_with_or_without_the_dataparallel_prefix(tmp_path, prefix):
    state = {k[len("module."):] if not prefix else k: v
             for k, v in torch.load(random_ckpt_dir(ANIME_WEIGHTS) / ANIME_WEIGHTS, weights_only=True).items()}
    torch.save(state, tmp_path / ANIME_WEIGHTS)
    net = LineartAnimeDetector(ckpt_dir=tmp_path).net
    assert torch.equal(net.model.model[0].weight, state[prefix + "model.model.0.weight"])


def test_lineart_weights_given_to_anime_is_a_clear_error(tmp_path):
    make_random_weights(FINE_WEIGHTS, tmp_path / ANIME_WEIGHTS)
    with pytest.raises(BadWeightsError, match=r"^netG\.pth is not a lineart anime \(Anime2Sketch\) file: missing"):
        LineartAnimeDetector(ckpt_dir=tmp_path).net
