"""The one Gradio builder behind every app: layout, common controls, the shared `process` core, errors.

`build_demo(task, engine, annotators)` makes any of the ten diffusion apps from its `Task` record;
`build_multi_demo` composes several ControlNets; `build_annotator_demo` is the annotator-only app. Nothing
is served until `launch` is called (by `cldm.app.cli`, or in-process by the tests).
"""
import contextlib
import inspect
import logging
from typing import Any, Callable, Optional, Sequence

import gradio as gr
import numpy as np
import torch

from annotator.util import resize_image
from cldm.app.annotators import Annotators
from cldm.app.engine import ControlUnit, Engine, NoModelError, Sampling
from cldm.app.images import canvas_to_mask, check_upload, to_rgb
from cldm.cldm import CONTROL_MODES
from cldm.app.tasks import ANNOTATOR_TABS, MAP_AS_IS, TASKS, AnnotatorTab, Option, Task, resize_to
from cldm.model import CheckpointError

log = logging.getLogger(__name__)

QUEUE_SIZE = 16  # waiting requests beyond this are turned away rather than queued for minutes
MAX_FILE_SIZE = "25mb"  # per uploaded file: a 50 MP photo as JPEG is ~15 MB; Gradio refuses larger ones
CACHE_TTL_S = 3600  # uploads and outputs are deleted an hour after they were written...
CACHE_SWEEP_S = 300  # ...by a sweep every 5 minutes
MAX_RESOLUTION = 768
DEFAULT_RESOLUTION = 512
CSS = "#banner {border: 1px solid #f59e0b; background: #fffbeb; color: #78350f; border-radius: 8px; padding: 4px 12px}"

# Errors the user can act on; they become a message in the page and the server keeps serving.
USER_ERRORS = (ValueError, FileNotFoundError, CheckpointError, NoModelError)
# Detector choices of the multi-ControlNet app: every upload app's, or none.
PREPROCESSORS = {name: task for name, task in TASKS.items() if not task.canvas} | {MAP_AS_IS.name: MAP_AS_IS}


@contextlib.contextmanager
def errors_shown_in_page():
    """Re-raise fixable errors as `gr.Error`, which Gradio shows in the page (and to API clients)."""
    try:
        yield
    except torch.OutOfMemoryError as e:
        log.warning("request refused: %s", e)
        raise gr.Error("Out of memory: lower Images or Image Resolution, or restart with --save-memory.",
                       print_exception=False) from e
    except USER_ERRORS as e:
        log.warning("request refused: %s", e)  # one line: the user's mistake, not the server's
        raise gr.Error(str(e), print_exception=False) from e


def event(names: Sequence[str], body: Callable[[dict, gr.Progress], Any]) -> Callable:
    """An event function with parameters `names` and `progress`, calling `body(values by name, progress)`.

    Gradio reads the signature: the API parameters get these names (clients may pass them by keyword), and
    its progress tracker is handed to the trailing `progress`. Fixable errors are shown in the page.
    """
    signature = inspect.Signature(
        [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in names]
        + [inspect.Parameter("progress", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=gr.Progress())])

    def run(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        progress = values.pop("progress")
        with errors_shown_in_page():
            return body(values, progress)

    run.__signature__ = signature
    return run


def option_input(option: Option):
    if option.step is None:
        return gr.Checkbox(label=option.label, value=bool(option.value))
    precision = 0 if float(option.step).is_integer() else None  # integer sliders deliver ints
    return gr.Slider(label=option.label, minimum=option.minimum, maximum=option.maximum, value=option.value,
                     step=option.step, precision=precision)


def unit_inputs(suffix: str = "") -> dict:
    """Per-ControlNet controls, keyed `strength`, `control_start`, `control_end`, `control_mode` (+ suffix)."""
    label = f" {suffix}" if suffix else ""
    key = f"_{suffix}" if suffix else ""
    return {
        f"control_mode{key}": gr.Dropdown(label=f"Control Mode{label}", choices=list(CONTROL_MODES.values()),
                                          value=CONTROL_MODES["balanced"],
                                          info="the webui's modes; 'ControlNet is more important' is guess mode"),
        f"strength{key}": gr.Slider(label=f"Control Strength{label}", minimum=0.0, maximum=2.0, value=1.0, step=0.01),
        f"control_start{key}": gr.Slider(label=f"Control start{label}", minimum=0.0, maximum=1.0, value=0.0,
                                         step=0.01, info="fraction of the steps before the control starts"),
        f"control_end{key}": gr.Slider(label=f"Control end{label}", minimum=0.0, maximum=1.0, value=1.0, step=0.01,
                                       info="fraction of the steps after which the control stops"),
    }


def advanced_options(engine: Engine, options: Sequence[Option] = (), with_unit: bool = True,
                     defaults: Optional[Sampling] = None, max_resolution: int = MAX_RESOLUTION,
                     extra: Optional[Callable[[], dict]] = None) -> dict:
    """Upstream's "Advanced options" accordion (plus control start/end) -> its inputs by parameter name.

    The resolution range starts at the model's native size when that is below 256 (the tiny demo model).
    defaults: the initial steps, scale, seed (-1: randomised per page load), eta and prompts (default: the
    engine's, 1.0's); extra(): more inputs, made inside the accordion after the resolution.
    """
    native = engine.native_resolution or DEFAULT_RESOLUTION
    defaults = defaults or engine.default_sampling
    seed = {"value": defaults.seed} if defaults.seed >= 0 else {"randomize": True}
    with gr.Accordion("Advanced options", open=False):
        inputs = {
            "num_samples": gr.Slider(label="Images", minimum=1, maximum=12, value=1, step=1, precision=0),
            "image_resolution": gr.Slider(label="Image Resolution", minimum=min(256, native), maximum=max_resolution,
                                          value=min(native, max_resolution), step=64, precision=0),
            **(extra() if extra else {}),
            **(unit_inputs() if with_unit else {}),
            **{o.key: option_input(o) for o in options},
            "ddim_steps": gr.Slider(label="Steps", minimum=1, maximum=100, value=defaults.ddim_steps, step=1,
                                    precision=0),
            "scale": gr.Slider(label="Guidance Scale", minimum=0.1, maximum=30.0, value=defaults.scale, step=0.1),
            "seed": gr.Slider(label="Seed", minimum=-1, maximum=2147483647, step=1, precision=0,
                              info="-1: a new random seed each run", **seed),
            "eta": gr.Number(label="eta (DDIM)", value=defaults.eta, minimum=0.0, maximum=1.0),
            "added_prompt": gr.Textbox(label="Added Prompt", value=defaults.added_prompt),
            "negative_prompt": gr.Textbox(label="Negative Prompt", value=defaults.negative_prompt),
        }
    return inputs


def _sampling(values: dict) -> Sampling:
    return Sampling(prompt=values["prompt"] or "", added_prompt=values["added_prompt"] or "",
                    negative_prompt=values["negative_prompt"] or "", num_samples=int(values["num_samples"]),
                    ddim_steps=int(values["ddim_steps"]),
                    scale=float(values["scale"]), seed=int(values["seed"]), eta=float(values["eta"]))


def _control(task: Task, annotators, image, resized, options: dict, strength, start, end, net=None,
             mode="balanced"):
    """Detect `task`'s map at `resized`'s size -> (its ControlUnit, the map as the gallery shows it)."""
    control_map = task.make_map(annotators, image, resized, **options)
    unit = ControlUnit(task.control(control_map), float(strength), float(start), float(end), net, mode or "balanced")
    return unit, task.show_map(control_map)


def _generate(engine: Engine, units, shown_maps, sampling: Sampling, progress) -> list:
    """Sample and lay out the gallery: the maps first, then the images (captioned with their seed)."""
    def on_step(i, total):
        progress((i, total), desc="Sampling", unit="steps")

    samples, seed = engine.generate(units, sampling, on_step)
    return [(m, "detected map") for m in shown_maps] + [(s, f"seed {seed}") for s in samples]


def _header(title: str, engine: Engine = None) -> None:
    gr.Markdown(f"## {title}")
    if engine is not None and engine.banner:
        gr.Markdown(engine.banner, elem_id="banner")
    elif engine is not None and getattr(engine, "model_label", ""):
        gr.Markdown(f"Model: `{engine.model_label}`", elem_id="model-in-use")


def _gallery(elem_id: str = "gallery") -> gr.Gallery:
    # PNG: Gradio's default WebP output is lossy, and the maps are exact.
    return gr.Gallery(label="Output", show_label=False, elem_id=elem_id, columns=2, height="auto", format="png")


def _checked_uploads(image: gr.Image) -> gr.Image:
    """Check `image`'s uploads before Gradio decodes them: a file that is no image, too large (a decompression
    bomb) or damaged is answered with our message naming the user's file name, instead of Gradio's internal
    error quoting the server's temporary path. (Wrapped per instance: a gr.Image subclass would make Gradio
    write a .pyi stub beside this module.)"""
    decode = image.preprocess

    def preprocess(payload):
        if payload is None:
            return None
        name = getattr(payload, "orig_name", None) or ""
        if not getattr(payload, "path", None):  # e.g. a data: URL, which would be decoded unchecked
            raise gr.Error("Upload the image as a file.", print_exception=False)
        try:
            check_upload(payload.path, name)
            return decode(payload)
        except ValueError as e:
            if str(e).startswith("The upload "):
                raise gr.Error(str(e), print_exception=False) from None
            unreadable = e
        except Exception as e:  # PIL's errors quote the temporary path: replaced by a message of ours
            unreadable = e
        log.warning("upload %r refused: %s", name, type(unreadable).__name__)
        raise gr.Error(f"The upload {name!r} could not be read as an image: the file is damaged, truncated or of a "
                       "format this app cannot read.", print_exception=False) from None

    image.preprocess = preprocess
    return image


def _image_input(elem_id: str = "input_image", label: str = "Input image") -> gr.Image:
    # PIL in its own mode, so 16-bit and transparent images are converted by our rules (cldm.app.images).
    return _checked_uploads(gr.Image(sources=["upload"], type="pil", image_mode=None, label=label, elem_id=elem_id))


def _blank_canvas(width, height) -> np.ndarray:
    return np.full((int(height), int(width), 3), 255, dtype=np.uint8)


def _canvas_input():
    """Upstream's interactive scribble input: size sliders, "Open drawing canvas!" and a black brush."""
    width = gr.Slider(label="Canvas Width", minimum=256, maximum=1024, value=512, step=1, precision=0)
    height = gr.Slider(label="Canvas Height", minimum=256, maximum=1024, value=512, step=1, precision=0)
    create = gr.Button(value="Open drawing canvas!")
    canvas = gr.Sketchpad(type="numpy", canvas_size=(512, 512), label="Drawing", elem_id="sketch",
                          brush=gr.Brush(colors=["#000000"], default_size=6, color_mode="fixed"))
    gr.Markdown("Pick the brush tool and draw black strokes on the white canvas.")
    create.click(fn=_blank_canvas, inputs=[width, height], outputs=[canvas], api_name="open_canvas")
    return canvas


def task_process(task: Task, engine: Engine, annotators: Annotators) -> Callable[[dict, gr.Progress], list]:
    """The shared `process` core of the diffusion apps: input -> map -> samples -> gallery."""
    def process(values: dict, progress) -> list:
        sampling = _sampling(values)
        engine.ensure_model()
        image = canvas_to_mask(values["input_image"]) if task.canvas else to_rgb(values["input_image"])
        progress(0, desc="Detecting")
        resized = resize_image(image, int(values["image_resolution"]))
        unit, shown = _control(task, annotators, image, resized, {o.key: values[o.key] for o in task.options},
                               values["strength"], values["control_start"], values["control_end"],
                               mode=values["control_mode"])
        return _generate(engine, [unit], [shown], sampling, progress)

    return process


def build_demo(task: Task, engine: Engine, annotators: Annotators) -> gr.Blocks:
    """One diffusion app (upstream's `gradio_<task>2image.py` page), queued one job at a time."""
    with gr.Blocks(title=task.title, analytics_enabled=False) as demo:
        _header(task.title, engine)
        with gr.Row():
            with gr.Column():
                inputs = {"input_image": _canvas_input() if task.canvas else _image_input(),
                          "prompt": gr.Textbox(label="Prompt", elem_id="prompt")}
                run = gr.Button(value="Run", variant="primary", elem_id="run")
                inputs.update(advanced_options(engine, task.options))
            with gr.Column():
                gallery = _gallery()
        run.click(fn=event(list(inputs), task_process(task, engine, annotators)), inputs=list(inputs.values()),
                  outputs=[gallery], api_name="run")
    return demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)


def multi_process(engine: Engine, annotators: Annotators) -> Callable[[dict, gr.Progress], list]:
    """Several maps -> samples; ControlNet i reads `input_image_i`, `preprocessor_i`, `strength_i`, ... The
    first image sets the output size; the others are fitted to it."""
    nets = [None, *engine.extra_nets]  # None: the model's own ControlNet

    def process(values: dict, progress) -> list:
        sampling = _sampling(values)
        engine.ensure_model()
        progress(0, desc="Detecting")
        units, shown = [], []
        for i, net in enumerate(nets, 1):
            preprocessor = values[f"preprocessor_{i}"]
            if preprocessor not in PREPROCESSORS:
                raise ValueError(f"unknown preprocessor {preprocessor!r}: choose one of {', '.join(PREPROCESSORS)}")
            task = PREPROCESSORS[preprocessor]
            image = to_rgb(values[f"input_image_{i}"])
            if units:
                resized = resize_to(image, units[0].control_map)
            else:
                resized = resize_image(image, int(values["image_resolution"]))
            unit, shown_map = _control(task, annotators, image, resized, task.default_options(),
                                       values[f"strength_{i}"], values[f"control_start_{i}"],
                                       values[f"control_end_{i}"], net, values[f"control_mode_{i}"])
            units.append(unit)
            shown.append(shown_map)
        return _generate(engine, units, shown, sampling, progress)

    return process


def build_multi_demo(tasks: Sequence[Task], engine: Engine, annotators: Annotators) -> gr.Blocks:
    """Several ControlNets on one prompt (`tasks[i]` names the checkpoint of ControlNet i+1); residuals add."""
    if engine.model is not None and len(engine.extra_nets) != len(tasks) - 1:
        raise ValueError(f"{len(tasks)} ControlNets asked for, but the engine holds {1 + len(engine.extra_nets)}")
    title = f"Control Stable Diffusion with {len(tasks)} ControlNets ({' + '.join(t.checkpoint for t in tasks)})"
    choices = [(MAP_AS_IS.title if task is MAP_AS_IS else name, name) for name, task in PREPROCESSORS.items()]
    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        _header(title, engine)
        with gr.Row():
            with gr.Column():
                inputs = {}
                with gr.Row():
                    for i, task in enumerate(tasks, 1):
                        with gr.Column():
                            gr.Markdown(f"**ControlNet {i}**: `control_sd15_{task.checkpoint}`")
                            inputs[f"input_image_{i}"] = _image_input(f"input_image_{i}", f"Input image {i}")
                            inputs[f"preprocessor_{i}"] = gr.Dropdown(
                                choices=choices, value=task.name, label=f"Preprocessor {i}",
                                info="with that app's default detector settings")
                            inputs.update(unit_inputs(str(i)))
                inputs["prompt"] = gr.Textbox(label="Prompt", elem_id="prompt")
                run = gr.Button(value="Run", variant="primary", elem_id="run")
                inputs.update(advanced_options(engine, with_unit=False))
            with gr.Column():
                gallery = _gallery()
        run.click(fn=event(list(inputs), multi_process(engine, annotators)), inputs=list(inputs.values()),
                  outputs=[gallery], api_name="run")
    return demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)


def tab_process(tab: AnnotatorTab, annotators: Annotators) -> Callable[[dict, gr.Progress], list]:
    def process(values: dict, progress) -> list:
        image = resize_image(to_rgb(values["input_image"]), int(values["resolution"]))
        return tab.run(annotators, image, **{o.key: values[o.key] for o in tab.options})

    return process


def build_annotator_demo(annotators: Annotators) -> gr.Blocks:
    """Upstream's `gradio_annotator.py`: one tab per detector, maps only, no diffusion model."""
    with gr.Blocks(title="ControlNet annotators", analytics_enabled=False) as demo:
        _header("ControlNet annotators")
        for tab in ANNOTATOR_TABS:
            with gr.Tab(tab.title):
                with gr.Row():
                    with gr.Column():
                        inputs = {"input_image": _image_input(f"input_image_{tab.name}"),
                                  **{o.key: option_input(o) for o in tab.options},
                                  "resolution": gr.Slider(label="resolution", minimum=256, maximum=1024,
                                                          value=tab.resolution, step=64, precision=0)}
                        run = gr.Button(value="Run", variant="primary", elem_id=f"run_{tab.name}")
                    with gr.Column():
                        gallery = _gallery(f"gallery_{tab.name}")
                run.click(fn=event(list(inputs), tab_process(tab, annotators)), inputs=list(inputs.values()),
                          outputs=[gallery], api_name=tab.name)
    return demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)


def _clear_input_errors(demo: gr.Blocks) -> None:
    """Make every input of `demo` answer a value it cannot take (a raw API call sending NaN to an integer slider,
    a word to a number) with one line naming the control, instead of Gradio's internal message listing the
    event's components. Gradio's own range errors (gr.Error) pass unchanged."""
    for block_fn in demo.fns.values():
        for block in block_fn.inputs:
            if getattr(block, "_clear_errors", False):
                continue
            decode, label = block.preprocess, getattr(block, "label", None) or type(block).__name__

            def preprocess(payload, decode=decode, label=label):
                try:
                    return decode(payload)
                except gr.Error:
                    raise
                except Exception as e:
                    shown = repr(payload) if isinstance(payload, (int, float, bool, str, type(None))) else "this value"
                    raise gr.Error(f"{label}: cannot use {shown[:40]} ({type(e).__name__})",
                                   print_exception=False) from None

            block.preprocess, block._clear_errors = preprocess, True


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port=None, max_file_size=MAX_FILE_SIZE,
           queue_size: int = QUEUE_SIZE, cache_ttl: int = CACHE_TTL_S, **kwargs):
    """Serve `demo` with the apps' CSS and errors shown in the page, within bounds: uploads over `max_file_size`
    (bytes, or e.g. "25mb") are refused, at most `queue_size` requests wait, and the uploads and outputs the
    app stored (Gradio's cache) are deleted `cache_ttl` seconds after they were written, and all of them when
    the server stops. kwargs go to `Blocks.launch`."""
    if cache_ttl < 1 or queue_size < 1:
        raise ValueError(f"cache_ttl and queue_size must be >= 1, got {cache_ttl} and {queue_size}")
    demo.delete_cache = (min(cache_ttl, CACHE_SWEEP_S), cache_ttl)  # (sweep every, delete when older than)
    demo.queue(max_size=queue_size, default_concurrency_limit=1)
    _clear_input_errors(demo)
    return demo.launch(server_name=host, server_port=port, css=CSS, show_error=True, max_file_size=max_file_size,
                       **kwargs)
