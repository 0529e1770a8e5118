"""The ControlNet 1.1 apps on the shared builder (`cldm.app.ui`): one page per `AppV11` record.

Beside 1.0's page: the Preprocessor radio ("None": the upload is the map), a Preprocessor Resolution
slider (or Pixel Perfect: the output's own size), Width and Height (0: from Image Resolution and the input's
aspect) with a Resize Mode, 1.1's defaults, and per kind a Denoising Strength (tile: img2img from the input)
or a sketch mask with Mask Blur (inpaint). Sampling is the Python API's (`cldm.generate.generate`, through
`Engine.generate`).
"""
import random
from typing import Callable, Optional, Tuple

import gradio as gr
import numpy as np

from annotator.inpaint import inpaint_control, inpaint_preview
from annotator.util import resize_image
from cldm.app.annotators import Annotators
from cldm.app.engine import ControlUnit, Engine, Sampling
from cldm.app.images import check_upload, to_rgb
from cldm.app.tasks_v11 import DENOISE, ETA, MASK_BLUR, SEED, AppV11
from cldm.app.ui import (QUEUE_SIZE, _checked_uploads, _gallery, _header, _image_input, _sampling, advanced_options,
                         event)
from cldm.generate import RANDOM_SEED_RANGE, RESIZE_MODES, fit_image, load_mask, pixel_perfect_resolution

SIZE_STEP = 64  # the sliders' step, as upstream's Image Resolution
RESIZE_LABELS = {"just_resize": "Just Resize", "crop_and_resize": "Crop and Resize",
                 "resize_and_fill": "Resize and Fill"}


def defaults_for(app: AppV11, engine: Engine) -> Sampling:
    """1.1's initial settings; on the demo model its engine's prompts and scale (it only learnt Fill50K captions)."""
    base = engine.default_sampling
    if engine.demo:
        return Sampling(added_prompt=base.added_prompt, negative_prompt=base.negative_prompt, scale=base.scale,
                        ddim_steps=app.steps, seed=SEED, eta=ETA)
    return Sampling(added_prompt=app.added_prompt, negative_prompt=app.negative_prompt, ddim_steps=app.steps,
                    seed=SEED, eta=ETA)


def output_size(image: np.ndarray, resolution: int, width: int, height: int) -> Tuple[int, int]:
    """(width, height) of the output: the sliders' when set (non-zero), else the input's aspect at `resolution`
    (short side; upstream's resize_image, sides rounded to multiples of 64)."""
    if width and height:
        return int(width), int(height)
    h, w = resize_image(np.zeros((*image.shape[:2], 1), np.uint8)[:, :, 0], int(resolution)).shape[:2]
    if width:
        return int(width), max(SIZE_STEP, round(int(width) * h / w / SIZE_STEP) * SIZE_STEP)
    if height:
        return max(SIZE_STEP, round(int(height) * w / h / SIZE_STEP) * SIZE_STEP), int(height)
    return w, h


def editor_image_and_mask(value) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """An ImageEditor value -> (the image (H, W, 3) uint8, the drawn mask (H, W) uint8, 255 = repaint, or None
    when nothing was drawn). The strokes are the opaque pixels of the layers drawn over the image."""
    if not isinstance(value, dict) or value.get("background") is None:
        return to_rgb(None), None
    image = to_rgb(value["background"])
    masks = [np.asarray(layer)[:, :, 3] for layer in value.get("layers") or []
             if layer is not None and np.asarray(layer).ndim == 3 and np.asarray(layer).shape[2] == 4]
    if not masks:
        return image, None
    drawn = np.max(masks, axis=0)
    return image, np.where(drawn > 0, 255, 0).astype(np.uint8)


def size_inputs(max_side: int) -> dict:
    return {
        "width": gr.Slider(label="Width", minimum=0, maximum=max_side, value=0, step=SIZE_STEP, precision=0,
                           info="0: from Image Resolution and the input's aspect"),
        "height": gr.Slider(label="Height", minimum=0, maximum=max_side, value=0, step=SIZE_STEP, precision=0,
                            info="0: from Image Resolution and the input's aspect"),
        "resize_mode": gr.Radio(label="Resize Mode", choices=[(RESIZE_LABELS[m], m) for m in RESIZE_MODES],
                                value=RESIZE_MODES[0], info="how the input is fitted to Width x Height"),
    }


def _read_inputs(app: AppV11, values: dict) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """The request's image (H, W, 3) uint8 and, for inpaint, its mask (H', W') uint8 (an upload beats a drawing)."""
    if app.kind != "inpaint":
        return to_rgb(values["input_image"]), None
    image, mask = editor_image_and_mask(values["input_image"])
    if values.get("mask_image") is not None:
        mask = load_mask(values["mask_image"])
    if mask is None:
        raise ValueError("No mask: draw over the part of the image to repaint, or upload a mask.")
    return image, mask


def _inpaint(target: np.ndarray, mask: np.ndarray, mode: str, blur: float):
    """-> (control with -1 under the blurred mask, the map shown, the inpainting arguments of generate)."""
    height, width = target.shape[:2]
    fitted_mask = fit_image(mask, width, height, mode, fill=0)
    control = inpaint_control(target, fitted_mask, blur)
    return control, inpaint_preview(control), dict(init_image=target, mask=fitted_mask, mask_blur=blur)


def _detect(app: AppV11, annotators, values: dict, target: np.ndarray, mode: str, seed: int, options: dict):
    """-> (the control, the map shown, img2img arguments of generate for tile)."""
    height, width = target.shape[:2]
    resolution = values.get("detect_resolution") or min(height, width)
    if values.get("pixel_perfect"):  # the input is already fitted: its own short side needs no rescale
        resolution = pixel_perfect_resolution(target, width, height, mode)
    detect_options = {k: v for k, v in options.items() if k != DENOISE.key}
    shown = app.make_map(annotators, target, values.get("preprocessor") or app.default_choice, int(resolution), seed,
                         **detect_options)
    image_args = dict(init_image=target, strength=float(options[DENOISE.key])) if app.kind == "img2img" else {}
    return app.control(shown), shown, image_args


def v11_process(app: AppV11, engine: Engine, annotators: Annotators) -> Callable[[dict, gr.Progress], list]:
    """Input (and mask) -> input fitted to the output size -> control -> samples -> gallery (the map first)."""
    def process(values: dict, progress) -> list:
        seed = int(values["seed"])
        if seed == -1:  # drawn here: shuffle's flow uses the same seed as the sampler
            seed = random.randint(*RANDOM_SEED_RANGE)
        sampling = _sampling({**values, "seed": seed})
        engine.ensure_model()
        image, mask = _read_inputs(app, values)
        width, height = output_size(image, values["image_resolution"], values["width"], values["height"])
        mode = values["resize_mode"] or RESIZE_MODES[0]
        target = fit_image(image, width, height, mode)
        progress(0, desc="Detecting")
        options = {o.key: values[o.key] for o in app.options}
        if app.kind == "inpaint":
            control, shown, image_args = _inpaint(target, mask, mode, float(options[MASK_BLUR.key]))
        else:
            control, shown, image_args = _detect(app, annotators, values, target, mode, seed, options)
        unit = ControlUnit(control, float(values["strength"]), float(values["control_start"]),
                           float(values["control_end"]), mode=values["control_mode"] or "balanced")
        samples, used = engine.generate([unit], sampling, lambda i, total: progress(
            (i, total), desc="Sampling", unit="steps"), **image_args)
        return [(shown, "detected map")] + [(s, f"seed {used}") for s in samples]

    return process


def _editor() -> gr.ImageEditor:
    """Upstream's sketch tool on the uploaded image: white strokes mark what to repaint. Its files are checked
    before Gradio decodes them, as the other uploads are (`ui._checked_uploads`)."""
    editor = gr.ImageEditor(label="Image (draw the mask)", sources=["upload"], type="pil", image_mode="RGBA",
                            elem_id="input_image", format="png", layers=False, transforms=(),
                            brush=gr.Brush(colors=["#ffffff"], default_size=24, color_mode="fixed"))
    decode = editor.preprocess

    def preprocess(payload):
        files = [getattr(payload, "background", None), getattr(payload, "composite", None),
                 *(getattr(payload, "layers", None) or [])]
        for file in files:
            if file is not None and getattr(file, "path", None):
                try:
                    check_upload(file.path, getattr(file, "orig_name", None) or "")
                except ValueError as e:
                    raise gr.Error(str(e), print_exception=False) from None
        return decode(payload)

    editor.preprocess = preprocess
    return editor


def build_v11_demo(app: AppV11, engine: Engine, annotators: Annotators) -> gr.Blocks:
    """One ControlNet 1.1 app (upstream 1.1's `gradio_<name>.py` page), queued one job at a time."""
    defaults = defaults_for(app, engine)
    with gr.Blocks(title=app.title, analytics_enabled=False) as demo:
        _header(app.title, engine)
        with gr.Row():
            with gr.Column():
                inputs = {"input_image": _editor() if app.kind == "inpaint" else _image_input()}
                if app.kind == "inpaint":
                    inputs["mask_image"] = _checked_uploads(gr.Image(
                        sources=["upload"], type="pil", image_mode=None, label="Mask (optional upload, white = "
                        "repaint; replaces the drawn one)", elem_id="mask_image"))
                inputs["prompt"] = gr.Textbox(label="Prompt", elem_id="prompt")
                run = gr.Button(value="Run", variant="primary", elem_id="run")
                if app.kind != "inpaint":
                    inputs["preprocessor"] = gr.Radio(choices=list(app.choices), value=app.default_choice,
                                                      label="Preprocessor", elem_id="preprocessor")

                def extra() -> dict:
                    more = size_inputs(app.max_resolution)
                    if app.detect_resolution:
                        more["detect_resolution"] = gr.Slider(label="Preprocessor Resolution", minimum=128,
                                                              maximum=1024, value=512, step=1, precision=0)
                        more["pixel_perfect"] = gr.Checkbox(
                            label="Pixel Perfect", value=False,
                            info="detect at the output size (its short side), ignoring Preprocessor Resolution")
                    return more

                inputs.update(advanced_options(engine, app.options, defaults=defaults,
                                               max_resolution=app.max_resolution, extra=extra))
            with gr.Column():
                gallery = _gallery()
        run.click(fn=event(list(inputs), v11_process(app, engine, annotators)), inputs=list(inputs.values()),
                  outputs=[gallery], api_name="run")
    return demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)
