"""cldm.generate: the Python API (text-to-image, img2img, inpainting, resize modes) on the bundled tiny model."""
import numpy as np
import pytest
import torch
from conftest import DEMO_WEIGHTS as WEIGHTS
from PIL import Image

from cldm.generate import Control, fit_image, generate, load_mask, load_rgb, pixel_perfect_resolution


def test_fit_image_modes():
    img = np.zeros((40, 80, 3), np.uint8)  # 2:1, a white square in the middle, grey border
    img[:] = 100
    img[10:30, 30:50] = 255
    just = fit_image(img, 64, 64, "just_resize")
    assert just.shape == (64, 64, 3)
    crop = fit_image(img, 64, 64, "crop_and_resize")  # scaled to 128x64, the centre 64 columns kept
    assert crop.shape == (64, 64, 3) and (crop[32, 32] == 255).all() and (crop[2, 2] == 100).all()
    fill = fit_image(img, 64, 64, "resize_and_fill")  # scaled to 64x32, padded above and below
    assert fill.shape == (64, 64, 3) and (fill[:16] == 100).all() and (fill[48:] == 100).all()
    assert (fill[32, 32] == 255).all()
    mask = fit_image(np.full((40, 80), 255, np.uint8), 64, 64, "resize_and_fill", fill=0)
    assert mask.shape == (64, 64) and mask[:14].max() == 0 and mask[20:44].min() == 255
    with pytest.raises(ValueError, match="unknown resize mode 'stretch'"):
        fit_image(img, 64, 64, "stretch")


def test_loading_images_and_masks(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:4, :, 3] = 255  # strokes (opaque) on the top half of a transparent layer
    Image.fromarray(rgba).save(tmp_path / "layer.png")
    layer = load_mask(tmp_path / "layer.png")
    assert (layer[:4] == 255).all() and (layer[4:] == 0).all()
    assert np.array_equal(load_mask(str(tmp_path / "layer.png")), layer)
    assert load_mask(np.eye(8, dtype=bool)).max() == 255
    assert (load_rgb(Image.fromarray(rgba))[4:] == 255).all()  # transparent composited on white, as HWC3
    assert load_rgb(Image.fromarray(np.full((4, 4), 7, np.uint8)).convert("P")).shape == (4, 4, 3)
    sixteen = Image.fromarray(np.full((4, 4), 0x8000, np.uint16))
    assert (load_rgb(sixteen) == 128).all()  # 16-bit grey keeps its top byte
    with pytest.raises(FileNotFoundError, match="image not found"):
        load_rgb(tmp_path / "none.png")


def test_pixel_perfect_resolution():
    img = np.zeros((300, 600, 3), np.uint8)
    assert pixel_perfect_resolution(img, 512, 512, "crop_and_resize") == 512  # short side 300 -> 512
    assert pixel_perfect_resolution(img, 512, 512, "just_resize") == 512
    assert pixel_perfect_resolution(img, 512, 512, "resize_and_fill") == 256  # long side 600 -> 512


pytestmark_tiny = pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"{WEIGHTS.name} absent")


@pytest.fixture(scope="module")
def tiny(demo_model):
    return demo_model


@pytest.fixture(scope="module")
def held_out():
    from training.eval_fill import heldout

    data = heldout(2, 64)
    hints = [(h.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for h in data.hints]
    return data, hints


@pytestmark_tiny
def test_same_images_as_the_evaluation_path(tiny, held_out):
    """DDIM through the API = the DDIM path that training.eval_fill scores (same noise for a seed): the hint,
    prompt, guidance and decoding reach the model the same way. A control strength of 0 changes the image."""
    from training.eval_fill import generate as eval_generate

    data, hints = held_out
    ours = generate(hints[0], data.prompts[0], tiny, steps=3, seed=7, width=64, height=64, guidance_scale=2.0,
                    progress_bar=False)
    theirs = eval_generate(tiny, data.hints[:1], data.prompts[:1], [7], steps=3, cfg=2.0)
    assert len(ours) == 1 and ours[0].size == (64, 64) and ours[0].info["seed"] == 7
    assert np.abs(np.asarray(ours[0]).astype(int) - theirs[0]).max() <= 1
    off = generate(hints[0], data.prompts[0], tiny, steps=3, seed=7, width=64, height=64, guidance_scale=2.0,
                   control_strength=0.0, progress_bar=False)
    assert np.abs(np.asarray(off[0]).astype(int) - theirs[0]).mean() > 2


@pytestmark_tiny
@pytest.mark.parametrize("sampler", ["dpmpp_2m_karras", "euler_a", "unipc"])
def test_samplers_sizes_and_seeds(tiny, held_out, sampler):
    data, hints = held_out
    kwargs = dict(steps=2, sampler=sampler, width=72, height=64, guidance_scale=2.0, progress_bar=False,
                  resize_mode="crop_and_resize")
    a = generate(hints[1], data.prompts[1], tiny, seed=3, num_images=2, **kwargs)
    assert [im.size for im in a] == [(72, 64)] * 2 and all(im.mode == "RGB" for im in a)
    b = generate(Control(hints[1]), data.prompts[1], tiny, seed=3, num_images=2, **kwargs)
    c = generate(hints[1], data.prompts[1], tiny, seed=4, num_images=2, **kwargs)
    assert np.array_equal(np.asarray(a[0]), np.asarray(b[0])) and not np.array_equal(np.asarray(a[0]), np.asarray(c[0]))
    assert not np.array_equal(np.asarray(a[0]), np.asarray(a[1]))  # one noise per image in the batch


@pytestmark_tiny
def test_img2img_and_inpainting(tiny, held_out):
    data, hints = held_out
    init = np.zeros((64, 128, 3), np.uint8)
    init[:, :64] = (200, 40, 40)
    init[:, 64:] = (30, 160, 90)
    common = dict(init_image=init, width=128, height=64, guidance_scale=2.0, progress_bar=False, seed=1)

    # strength 0: the init image's VAE reconstruction (no step runs)
    calls = []
    out = generate(hints[0], data.prompts[0], tiny, strength=0.0, steps=4, callback=calls.append, **common)
    x = torch.from_numpy(init).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        z = tiny.get_first_stage_encoding(tiny.encode_first_stage(x).mode())
        recon = ((tiny.decode_first_stage(z) + 1) * 127.5).clamp(0, 255).round().to(torch.uint8)[0].permute(1, 2, 0)
    assert not calls and np.array_equal(np.asarray(out[0]), recon.numpy())

    # strength 0.5 of 4 steps: 2 steps, from the noised init; on_phase brackets the sampling
    calls = []
    half = generate(hints[0], data.prompts[0], tiny, strength=0.5, steps=4, sampler="dpmpp_2m",
                    callback=lambda info: calls.append(info["i"]),
                    on_phase=lambda diffusing: calls.append(f"diffusing={diffusing}"), **common)
    assert calls == ["diffusing=True", 0, 1, "diffusing=False"]
    assert not np.array_equal(np.asarray(half[0]), np.asarray(out[0]))

    # inpainting the right half: the left, unmasked pixels are the init's (pasted back), the right is new
    mask = np.zeros((64, 128), np.uint8)
    mask[:, 64:] = 255
    painted = np.asarray(generate(hints[0], data.prompts[0], tiny, mask=mask, steps=3, mask_blur=2.0,
                                  **common)[0]).astype(int)
    assert np.array_equal(painted[:, :52], init[:, :52])
    assert np.abs(painted[:, 76:] - init[:, 76:]).mean() > 5
    with pytest.raises(ValueError, match="needs the image to paint into"):
        generate(hints[0], "x", tiny, mask=mask)
    with pytest.raises(ValueError, match="multiples of 8"):
        generate(hints[0], "x", tiny, width=60, height=64)
    with pytest.raises(ValueError, match="unknown sampler"):
        generate(hints[0], "x", tiny, sampler="plms")
