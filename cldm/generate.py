"""Generate images with a loaded ControlLDM from Python, no Gradio: text-to-image, img2img and inpainting.

    from cldm.generate import generate
    images = generate(control_map, "a red circle", model=model, steps=20, sampler="dpmpp_2m", seed=1)

``control_map`` is the condition image the ControlNet reads (an annotator's output, e.g. a Canny map), not a
photo to annotate. Everything per request is an argument; the shared model is never modified. The modes:

- text-to-image: no ``init_image``;
- img2img: ``init_image`` and a denoising ``strength`` (0 returns its VAE reconstruction, 1 redraws fully);
- inpainting: ``init_image`` and a ``mask`` (white = repaint), blurred by ``mask_blur`` pixels (Gaussian
  sigma); the latents outside it follow the noised init at every step and, with ``paste_back``, the
  unmasked pixels of the init image are pasted back over the decoded result.

Control maps, init images and masks are fitted to ``width`` x ``height`` (multiples of 8) by ``resize_mode``:
"just_resize" (stretch), "crop_and_resize" (cover, centre crop) or "resize_and_fill" (fit inside, pad with the
border's median colour), the three modes of the sd-webui-controlnet extension. The samplers are those of
``ldm.models.diffusion.samplers``.
"""
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Union

import cv2
import numpy as np
import torch
from PIL import Image

from annotator.inpaint import blurred_mask
from annotator.util import HWC3
from cldm.cldm import ControlInput, control_mode as check_control_mode
from ldm.models.diffusion.samplers import SAMPLERS, sample

LATENT_FACTOR = 8  # the VAE maps 8x8 pixels to one latent
RESIZE_MODES = ("just_resize", "crop_and_resize", "resize_and_fill")
RANDOM_SEED_RANGE = (0, 65535)  # what upstream draws from when the seed is -1

ImageLike = Union[Image.Image, np.ndarray, str, Path]


@dataclass
class Control:
    """One ControlNet's share of a request: its condition image, strength, active range and mode.

    ``net=None`` is the model's own ControlNet; give another ``cldm.cldm.ControlNet`` to stack several."""
    image: ImageLike
    strength: float = 1.0
    start: float = 0.0  # fractions of the sampling steps, 0 = first (noisiest) step
    end: float = 1.0
    mode: str = "balanced"  # a key or label of cldm.cldm.CONTROL_MODES
    net: Optional[torch.nn.Module] = None


# ---------------------------------------------------------------------------------------------- images
def _open(image: ImageLike, what: str):
    """A path -> its decoded PIL image; anything else unchanged."""
    if isinstance(image, (str, Path)):
        if not Path(image).is_file():
            raise FileNotFoundError(f"{what} not found: {image}")
        with Image.open(image) as opened:
            opened.load()
            return opened.copy()
    return image


def _pil_to_array(image: Image.Image) -> np.ndarray:
    """Any PIL mode -> uint8 L, RGB or RGBA (16-bit grey keeps its top byte; palettes and transparency kept)."""
    if image.mode in ("L", "RGB", "RGBA"):
        return np.asarray(image)
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        return (np.asarray(image).astype(np.int64) >> 8).clip(0, 255).astype(np.uint8)
    transparent = image.mode in ("LA", "PA", "La", "RGBa") or "transparency" in image.info
    return np.asarray(image.convert("RGBA" if transparent else "RGB"))


def load_rgb(image: ImageLike) -> np.ndarray:
    """A PIL image, a uint8 array or a file path -> (H, W, 3) uint8 RGB (grey expanded, transparency
    composited on white, as upstream's HWC3)."""
    image = _open(image, "image")
    array = _pil_to_array(image) if isinstance(image, Image.Image) else np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {array.dtype}")
    return HWC3(array)


def load_mask(mask: ImageLike) -> np.ndarray:
    """A mask (white = repaint) as PIL, array or path -> (H, W) uint8: a grey mask as it is, an RGB(A) mask's
    first channel, or the alpha channel of a transparent stroke layer (strokes = the opaque pixels)."""
    mask = _open(mask, "mask")
    array = _pil_to_array(mask) if isinstance(mask, Image.Image) else np.asarray(mask)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.dtype != np.uint8:
        raise ValueError(f"expected a uint8 or bool mask, got {array.dtype}")
    if array.ndim == 3:
        if array.shape[2] == 4 and array[..., 3].min() < 255:
            return array[..., 3].copy()
        array = array[..., 0]
    return array


def _resize(image: np.ndarray, width: int, height: int, interpolation: Optional[int]) -> np.ndarray:
    if interpolation is None:
        shrinking = width * height < image.shape[0] * image.shape[1]
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LANCZOS4
    out = cv2.resize(image, (width, height), interpolation=interpolation)
    return out if out.ndim == image.ndim else out[..., None]


def fit_image(image: np.ndarray, width: int, height: int, mode: str = "just_resize",
              interpolation: Optional[int] = None, fill=None) -> np.ndarray:
    """``image`` (H, W[, C]) uint8 fitted to ``width`` x ``height`` by ``mode`` (see the module docstring).

    ``interpolation``: a cv2 flag; default area when shrinking, Lanczos when enlarging. ``fill``: the padding
    value of "resize_and_fill"; default the median of the resized image's border pixels."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r}; choose one of {', '.join(RESIZE_MODES)}")
    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image.copy()
    if mode == "just_resize":
        return _resize(image, width, height, interpolation)
    scale = (max if mode == "crop_and_resize" else min)(width / w, height / h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    resized = _resize(image, new_w, new_h, interpolation)
    if mode == "crop_and_resize":
        top, left = (new_h - height) // 2, (new_w - width) // 2
        return resized[top:top + height, left:left + width].copy()
    if fill is None:
        border = np.concatenate([resized[0], resized[-1], resized[:, 0], resized[:, -1]]).reshape(-1, *image.shape[2:])
        fill = np.median(border, axis=0).round().astype(np.uint8)
    out = np.empty((height, width, *image.shape[2:]), dtype=image.dtype)
    out[...] = fill
    top, left = (height - new_h) // 2, (width - new_w) // 2
    out[top:top + new_h, left:left + new_w] = resized
    return out


def pixel_perfect_resolution(image: np.ndarray, width: int, height: int, mode: str = "just_resize") -> int:
    """The annotator resolution (short side) at which a detector's map lands at the target size without
    further scaling: the image's short side times the target/image scale the resize mode applies
    (the larger of the two axis scales, the smaller for "resize_and_fill"), as sd-webui-controlnet does."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r}; choose one of {', '.join(RESIZE_MODES)}")
    h, w = image.shape[:2]
    scale = (min if mode == "resize_and_fill" else max)(height / h, width / w)
    return int(round(scale * min(h, w)))


def check_size(width: int, height: int) -> None:
    if width < LATENT_FACTOR or height < LATENT_FACTOR or width % LATENT_FACTOR or height % LATENT_FACTOR:
        raise ValueError(f"width and height must be positive multiples of {LATENT_FACTOR}, got {width}x{height}")


def latent_mask(mask: np.ndarray, width: int, height: int, mode: str, blur: float):
    """A uint8 mask -> (pixel mask (H, W) float in [0, 1], latent mask (1, 1, H/8, W/8) tensor), both blurred."""
    fitted = fit_image(mask, width, height, mode, interpolation=cv2.INTER_LINEAR, fill=0)
    pixel = blurred_mask(fitted, (width, height), blur)
    latent = cv2.resize(pixel, (width // LATENT_FACTOR, height // LATENT_FACTOR), interpolation=cv2.INTER_AREA)
    return pixel, torch.from_numpy(np.clip(latent, 0.0, 1.0))[None, None]


def _to_tensor(image: np.ndarray, device) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float().div(255.0).to(device)


def _hint(image, width: int, height: int, mode: str, device) -> torch.Tensor:
    """A condition image fitted to the output -> (1, 3, H, W): a uint8 image scaled to [0, 1]; a float32
    (H, W, 3) array is the hint's values themselves (1.1 inpaint marks its masked pixels -1, as upstream)."""
    if isinstance(image, np.ndarray) and image.dtype == np.float32 and image.ndim == 3 and image.shape[2] == 3:
        fitted = fit_image(image, width, height, mode, interpolation=cv2.INTER_NEAREST, fill=0.0)
        return torch.from_numpy(np.ascontiguousarray(fitted)).permute(2, 0, 1)[None].to(device)
    return _to_tensor(fit_image(load_rgb(image), width, height, mode), device)


# ------------------------------------------------------------------------------------------ generation
def _controls(control_image, strength, start, end, mode, guess_mode) -> List[Control]:
    if control_image is None:
        return []
    if isinstance(control_image, Control):
        units = [control_image]
    elif isinstance(control_image, (list, tuple)) and all(isinstance(c, Control) for c in control_image):
        units = list(control_image)
    else:
        units = [Control(control_image, strength, start, end, mode)]
    for unit in units:
        if not (math.isfinite(unit.strength) and unit.strength >= 0):
            raise ValueError(f"control strength must be a number >= 0, got {unit.strength}")
        check_control_mode("control" if guess_mode else unit.mode)  # a clear error for an unknown mode, up front
    return units


@torch.no_grad()
def generate(control_image, prompt: str, model, *, negative_prompt: str = "", steps: int = 20,
             sampler: str = "ddim", init_image: Optional[ImageLike] = None, mask: Optional[ImageLike] = None,
             strength: Optional[float] = None, seed: Optional[int] = None, width: Optional[int] = None,
             height: Optional[int] = None, guidance_scale: float = 9.0, num_images: int = 1,
             resize_mode: str = "just_resize", control_strength: float = 1.0, control_start: float = 0.0,
             control_end: float = 1.0, control_mode: str = "balanced", guess_mode: bool = False,
             eta: Optional[float] = None, mask_blur: float = 4.0, paste_back: bool = True,
             callback: Optional[Callable[[dict], None]] = None, progress_bar: bool = True,
             on_phase: Optional[Callable[[bool], None]] = None) -> List[Image.Image]:
    """Sample ``num_images`` images from ``model`` (a loaded ControlLDM) -> a list of PIL RGB images.

    ``control_image``: the condition map (PIL, uint8 array or path), a ``Control``, a list of ``Control`` (several
    ControlNets; their residuals add) or None (no control). ``strength``: img2img's denoising strength,
    default 0.75 with an ``init_image`` alone and 1.0 otherwise. ``seed`` None or -1 draws one in [0, 65535];
    each image's ``info['seed']`` says which. ``width``/``height`` default to the model's native size.
    ``control_mode``: "balanced", "prompt" or "control" (``guess_mode`` makes every control "control").
    ``callback(info)`` gets the sampler's ``{'i', 'total', 't', 'x', 'pred_x0'}`` after each step.
    ``on_phase(diffusing)`` is called with True before sampling and False after it (the text encoder and VAE
    run outside): where a low-VRAM caller moves the UNet and ControlNets on and off the device.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if not (math.isfinite(guidance_scale) and guidance_scale > 0):
        raise ValueError(f"guidance_scale must be a number > 0, got {guidance_scale}")
    if mask is not None and init_image is None:
        raise ValueError("inpainting needs the image to paint into: pass init_image= with the mask")
    if strength is None:
        strength = 0.75 if init_image is not None and mask is None else 1.0
    if strength != 1.0 and init_image is None:
        raise ValueError(f"a denoising strength ({strength}) needs an init_image to start from")
    native = model.image_size * LATENT_FACTOR
    width, height = width or native, height or native
    check_size(width, height)
    if seed is None or seed == -1:
        seed = random.randint(*RANDOM_SEED_RANGE)
    units = _controls(control_image, control_strength, control_start, control_end, control_mode, guess_mode)
    device = model.device
    n, latent_shape = num_images, (num_images, 4, height // LATENT_FACTOR, width // LATENT_FACTOR)

    cond = {"c_crossattn": [model.get_learned_conditioning([prompt] * n)]}
    uncond = {"c_crossattn": [model.get_learned_conditioning([negative_prompt] * n)]}
    controls = []
    for unit in units:
        hint = _hint(unit.image, width, height, resize_mode, device).expand(n, -1, -1, -1)
        controls.append(ControlInput.for_mode(hint, unit.strength, "control" if guess_mode else unit.mode,
                                              model=unit.net, start=unit.start, end=unit.end))
    eps_fn = model.guided_eps_fn(cond, uncond, guidance_scale, controls=controls)

    generator = torch.Generator(device).manual_seed(seed)
    noise = torch.randn(latent_shape, generator=generator, device=device)
    init_pixels = init_latents = latent_keep = pixel_mask = None
    if init_image is not None:
        init_pixels = fit_image(load_rgb(init_image), width, height, resize_mode)
        init_latents = encode(model, init_pixels).expand(n, -1, -1, -1)
    if mask is not None:
        pixel_mask, latent_keep = latent_mask(load_mask(mask), width, height, resize_mode, mask_blur)
    if on_phase is not None:
        on_phase(True)
    latents = sample(sampler, eps_fn, noise, model.alphas_cumprod_np, steps, init=init_latents, strength=strength,
                     mask=None if latent_keep is None else latent_keep.to(device), eta=eta, generator=generator,
                     callback=callback, progress_bar=progress_bar)
    if on_phase is not None:
        on_phase(False)
    images = decode(model, latents)
    if pixel_mask is not None and paste_back:
        m = pixel_mask[None, :, :, None]
        images = (m * images + (1.0 - m) * init_pixels[None].astype(np.float32)).round().astype(np.uint8)
    out = []
    for array in images:
        image = Image.fromarray(array)
        image.info["seed"] = seed
        out.append(image)
    return out


def encode(model, image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 4, H/8, W/8) latents: the VAE posterior's mean (deterministic), scaled."""
    vae_dtype = next(model.first_stage_model.parameters()).dtype
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    posterior = model.encode_first_stage(x.to(model.device, vae_dtype))
    z = posterior.mode() if hasattr(posterior, "mode") else posterior
    return model.get_first_stage_encoding(z).float()


def decode(model, latents: torch.Tensor) -> np.ndarray:
    """(n, 4, h, w) latents -> (n, 8h, 8w, 3) uint8 RGB."""
    vae_dtype = next(model.first_stage_model.parameters()).dtype
    x = model.decode_first_stage(latents.to(vae_dtype)).float()
    return ((x + 1.0) * 127.5).clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


if __name__ == "__main__":
    from cldm.generate_cli import main

    raise SystemExit(main())
