"""MiDaS depth/normal annotator: checkpoint contract, strict loading, pre/post-processing, end to end.

Random weights stand in for `dpt_hybrid-midas-501f0c75.pt`; the real architecture runs at 64x96 px.
"""
import re

import cv2
import numpy as np
import pytest
import torch

from annotator.midas import WEIGHTS, MidasDetector, normal_from_depth, normalise_depth
from annotator.midas.dpt import DPTDepth
from annotator.util import BadWeightsError, MissingWeightsError
from tests.annotator_weights import load_test_image, make_random_weights, manifest

A = np.pi * 2.0


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("midas_ckpts")
    make_random_weights(WEIGHTS, folder)
    return folder


@pytest.fixture(scope="module")
def detector(weights_dir):
    return MidasDetector(ckpt_dir=weights_dir)


def test_state_dict_matches_manifest():
    with torch.device("meta"):
        net = DPTDepth()
    assert {k: list(v.shape) for k, v in net.state_dict().items()} == manifest(WEIGHTS)


def test_loads_plain_file_strictly(detector, weights_dir):
    saved = torch.load(weights_dir / WEIGHTS, weights_only=True)
    params = detector.net.state_dict()
    for key in ("pretrained.model.pos_embed", "pretrained.model.head.weight",
                "scratch.refinenet4.resConfUnit1.conv1.weight", "scratch.output_conv.4.bias"):
        assert torch.equal(params[key], saved[key])


def test_end_to_end_on_test_image(detector):
    img = cv2.resize(load_test_image("dog.png", 512), (96, 64), interpolation=cv2.INTER_AREA)  # skips if absent
    depth, normal = detector(img)
    assert depth.shape == (64, 96) and depth.dtype == np.uint8
    assert normal.shape == (64, 96, 3) and normal.dtype == np.uint8
    assert depth.min() == 0 and depth.max() == 255  # min-max normalised, non-constant with random weights
    assert normal[..., 2].min() >= 127  # z = a > 0 everywhere


def test_input_is_rgb_scaled_to_unit_range(detector, monkeypatch):
    seen = {}

    def fake_net(x):
        seen["x"] = x
        return torch.zeros(1, *x.shape[-2:])

    monkeypatch.setitem(detector.__dict__, "net", fake_net)
    img = np.zeros((32, 64, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 0, 255, 51
    depth, normal = detector(img)
    assert torch.equal(seen["x"][0, :, 0, 0], torch.tensor([-1.0, 1.0, 51 / 127.5 - 1.0]))
    assert (depth == 0).all()  # a constant depth maps to zeros (upstream would divide by zero)
    assert (normal == [127, 127, 255]).all()


def test_normalise_depth_is_min_max():
    assert np.array_equal(normalise_depth(np.array([[2.0, 4.0, 6.0]], np.float32)), [[0.0, 0.5, 1.0]])


def test_normal_from_depth_on_a_plane():
    # depth = s * (x + 2y) with s = a / 8: the 3x3 Sobel gives (8s, 16s) = (a, 2a) inside the image and
    # 0 across the border (reflect-101), so interior normals are (1, 2, 1) / sqrt(6).
    h, w, s = 8, 12, np.float32(A / 8)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    depth = s * (xx + 2 * yy)
    depth_pt = normalise_depth(depth)  # (x + 2y) / 25
    normal = normal_from_depth(depth, depth_pt, A, bg_th=0.1)
    assert normal.shape == (h, w, 3) and normal.dtype == np.uint8
    background = (xx + 2 * yy) <= 2  # 2/25 < 0.1 < 3/25
    assert background.sum() == 4 and (normal[background] == [127, 127, 255]).all()
    n = np.array([1.0, 2.0, 1.0]) / np.sqrt(6.0)  # -> 127.5 * n + 127.5 = (179.55, 231.6, 179.55)
    assert (normal[1:-1, 1:-1] == np.floor(n * 127.5 + 127.5)).all()
    assert (normal[1:-1, 1:-1] == [179, 231, 179]).all()
    # Left/right border columns: x slope 0 -> (0, 2a, a) / |.| = (127, 241, 184); top/bottom rows: (217, 127, 217).
    assert (normal[1:-1, [0, -1]][~background[1:-1, [0, -1]]] == [127, 241, 184]).all()
    assert (normal[[0, -1], 1:-1][~background[[0, -1], 1:-1]] == [217, 127, 217]).all()


def test_background_threshold_uses_normalised_depth():
    depth = np.tile(np.arange(16, dtype=np.float32) * 1000.0, (4, 1))  # raw values far above bg_th
    normal = normal_from_depth(depth, normalise_depth(depth), A, bg_th=0.42)
    x_flat = normal[:, :, 0] == 127
    assert x_flat[:, :7].all() and not x_flat[:, 7:-1].any()  # background: x / 15 < 0.42 for x <= 6


def test_size_not_multiple_of_32_is_rejected(detector):
    with pytest.raises(ValueError, match="multiples of 32"):
        detector(np.zeros((64, 80, 3), np.uint8))


def test_missing_file(tmp_path):
    with pytest.raises(MissingWeightsError, match=WEIGHTS):
        MidasDetector(ckpt_dir=tmp_path)(np.zeros((64, 64, 3), np.uint8))


def test_wrong_file_names_file_and_keys(tmp_path):
    path = make_random_weights("ControlNetHED.pth", tmp_path)
    with pytest.raises(BadWeightsError) as err:
        MidasDetector(weights=str(path)).net
    message = str(err.value)
    assert "\n" not in message and "ControlNetHED.pth" in message
    assert "missing" in message and "pretrained." in message and "block1.convs" in message


# Our key -> transformers' DPT-Hybrid key (first match wins; names inside blocks are renamed afterwards).
HF_KEY_RULES = [
    (r"^pretrained\.model\.patch_embed\.backbone\.stem\.conv\.", "dpt.embeddings.backbone.bit.embedder.convolution."),
    (r"^pretrained\.model\.patch_embed\.backbone\.stem\.norm\.", "dpt.embeddings.backbone.bit.embedder.norm."),
    (r"^pretrained\.model\.patch_embed\.backbone\.stages\.(\d+)\.blocks\.",
     r"dpt.embeddings.backbone.bit.encoder.stages.\1.layers."),
    (r"^pretrained\.model\.patch_embed\.proj\.", "dpt.embeddings.projection."),
    (r"^pretrained\.model\.cls_token$", "dpt.embeddings.cls_token"),
    (r"^pretrained\.model\.pos_embed$", "dpt.embeddings.position_embeddings"),
    (r"^pretrained\.model\.blocks\.(\d+)\.", r"dpt.encoder.layer.\1."),
    (r"^pretrained\.model\.norm\.", "dpt.layernorm."),
    (r"^pretrained\.act_postprocess([34])\.0\.project\.0\.",
     lambda m: f"neck.reassemble_stage.readout_projects.{int(m[1]) - 1}.0."),
    (r"^pretrained\.act_postprocess([34])\.3\.", lambda m: f"neck.reassemble_stage.layers.{int(m[1]) - 1}.projection."),
    (r"^pretrained\.act_postprocess4\.4\.", "neck.reassemble_stage.layers.3.resize."),
    (r"^scratch\.layer(\d)_rn\.", lambda m: f"neck.convs.{int(m[1]) - 1}."),
    (r"^scratch\.refinenet(\d)\.", lambda m: f"neck.fusion_stage.layers.{4 - int(m[1])}."),  # deepest first
    (r"^scratch\.output_conv\.", "head.head."),
]
HF_NAME_RULES = [
    ("norm1.", "layernorm_before."), ("norm2.", "layernorm_after."), ("attn.proj.", "attention.output.dense."),
    ("mlp.fc1.", "intermediate.dense."), ("mlp.fc2.", "output.dense."),
    ("resConfUnit1.conv", "residual_layer1.convolution"), ("resConfUnit2.conv", "residual_layer2.convolution"),
    ("out_conv.", "projection."),
]


def to_transformers_keys(state: dict) -> dict:
    """Our DPT-Hybrid state dict renamed for ``transformers.DPTForDepthEstimation`` (qkv split, classifier dropped)."""
    out = {}
    for key, value in state.items():
        if key.startswith("pretrained.model.head."):
            continue
        pattern, repl = next((p, r) for p, r in HF_KEY_RULES if re.search(p, key))
        new = re.sub(pattern, repl, key)
        if key.startswith("pretrained.model.blocks.") or key.startswith("scratch.refinenet"):
            for old, rep in HF_NAME_RULES:
                new = new.replace(old, rep)
        if ".attn.qkv." in new:
            for name, part in zip(("query", "key", "value"), value.chunk(3)):
                out[new.replace("attn.qkv.", f"attention.attention.{name}.")] = part
        else:
            out[new] = value
    return out


def test_matches_transformers_dpt_hybrid(weights_dir):
    """transformers' DPT-Hybrid is an independent implementation of the same network: outputs must agree."""
    transformers = pytest.importorskip("transformers")
    config = transformers.DPTConfig(
        is_hybrid=True, image_size=384, readout_type="project", neck_hidden_sizes=[256, 512, 768, 768],
        backbone_out_indices=[2, 5, 8, 11], reassemble_factors=[1, 1, 1, 0.5], fusion_hidden_size=256,
        layer_norm_eps=1e-6)  # timm's ViT eps (transformers defaults to 1e-12)
    with torch.device("meta"):
        reference, ours = transformers.DPTForDepthEstimation(config), DPTDepth()
    state = torch.load(weights_dir / WEIGHTS, weights_only=True, mmap=True)
    ours.load_state_dict(state, assign=True)
    reference.load_state_dict(to_transformers_keys(state), strict=True, assign=True)
    reference.dpt.embeddings.image_size = (64, 64)  # its input-size check; position embeddings are resized anyway
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.inference_mode():
        expected = reference.eval()(pixel_values=x).predicted_depth
        torch.testing.assert_close(ours.eval()(x), expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
