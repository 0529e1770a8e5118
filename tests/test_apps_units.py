"""The app pieces without a server: task records and map rules, input conversion, model choice, the engine's
per-request settings, the command line, and the size of the app scripts."""
import inspect
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ldm.accel import resolve_dtype
from apps_support import FAST, ROOT_SCRIPTS, task_kwargs, tiny_engine
from PIL import Image

from cldm.app import cli, tasks
from cldm.app.engine import ControlUnit, Engine, NoModelError, Sampling
from cldm.app.images import MAX_INPUT_PIXELS, canvas_to_mask, to_rgb
from cldm.app.tasks import ANNOTATOR_TABS, TASKS
from cldm.app.ui import build_demo, event, task_process
from cldm.app.weights import resolve_model
from cldm.cldm import NUM_CONTROLS

ROOT = Path(__file__).resolve().parents[1]


class StubAnnotators:
    """Detectors replaced by cheap fakes returning maps of three known values at the size they were given."""

    @staticmethod
    def _map(img, channels=1):
        h, w = img.shape[:2]
        m = np.zeros((h, w, channels), np.uint8)
        m[:, : w // 2] = 77
        m[h // 3:, w // 3:] = 255
        return m[:, :, 0] if channels == 1 else m

    canny = staticmethod(lambda img, low, high: StubAnnotators._map(img))
    hed = staticmethod(lambda img: StubAnnotators._map(img))
    mlsd = staticmethod(lambda img, v, d: StubAnnotators._map(img))
    uniformer = staticmethod(lambda img: StubAnnotators._map(img, 3))
    openpose = staticmethod(lambda img, hand=False: (StubAnnotators._map(img, 3), {}))
    midas = staticmethod(lambda img, a=6.28, bg_th=0.1: (StubAnnotators._map(img), StubAnnotators._map(img, 3)))
    pidinet = staticmethod(lambda img, safe=False: StubAnnotators._map(img))
    lineart = staticmethod(lambda img, coarse=False: StubAnnotators._map(img))
    lineart_anime = staticmethod(lambda img: StubAnnotators._map(img))
    normalbae = staticmethod(lambda img: StubAnnotators._map(img, 3))
    openpose_full = staticmethod(lambda img, hand_and_face=False: (StubAnnotators._map(img, 3), {}))


# ---------------------------------------------------------------------------------------------- scripts

def test_app_scripts_are_short_and_each_runs_its_own_app():
    assert len(ROOT_SCRIPTS) == 12
    entry_points = set()
    for name in ROOT_SCRIPTS:
        text = (ROOT / name).read_text()
        assert len(text.splitlines()) <= 40, name
        call = re.search(r'if __name__ == "__main__":\n    (.+)\n', text).group(1)
        entry_points.add(call)
        assert "launch(" not in text.split("__main__")[0]  # nothing is served on import
    assert len(entry_points) == 12
    assert {f"main(tasks.{n})" for n in ("CANNY", "HOUGH", "HED", "SCRIBBLE", "SCRIBBLE_INTERACTIVE", "FAKE_SCRIBBLE",
                                         "POSE", "SEG", "DEPTH", "NORMAL")} < entry_points


# ------------------------------------------------------------------------------------------ task records

def test_task_records_keep_upstream_defaults():
    defaults = {name: task.default_options() for name, task in TASKS.items()}
    assert defaults["canny"] == {"low_threshold": 100, "high_threshold": 200}
    assert defaults["hough"] == {"detect_resolution": 512, "value_threshold": 0.1, "distance_threshold": 0.1}
    assert defaults["depth"] == {"detect_resolution": 384}
    assert defaults["normal"] == {"detect_resolution": 384, "bg_threshold": 0.4}
    for name in ("hed", "fake_scribble", "pose", "seg"):
        assert defaults[name] == {"detect_resolution": 512}
    assert {n: t.checkpoint for n, t in TASKS.items()} == {
        "canny": "canny", "hough": "mlsd", "hed": "hed", "scribble": "scribble", "scribble_interactive": "scribble",
        "fake_scribble": "scribble", "pose": "openpose", "seg": "seg", "depth": "depth", "normal": "normal"}


NEAREST, LINEAR = {"hough", "pose", "seg"}, {"hed", "depth", "normal"}


@pytest.mark.parametrize("name", sorted(NEAREST | LINEAR))
def test_detected_maps_are_resized_as_upstream(name):
    """INTER_NEAREST keeps the detector's values exactly; INTER_LINEAR blends them at the edges."""
    task = TASKS[name]
    image = np.zeros((100, 150, 3), np.uint8)
    resized = np.zeros((64, 128, 3), np.uint8)
    options = {**task.default_options(), "detect_resolution": 200}
    control_map = task.make_map(StubAnnotators(), image, resized, **options)
    assert control_map.shape == (64, 128, 3) and control_map.dtype == np.uint8
    values = set(np.unique(control_map))
    assert values <= {0, 77, 255} if name in NEAREST else len(values) > 3


def test_map_display_rules():
    edges = np.zeros((8, 8, 3), np.uint8)
    edges[4, 4] = 255
    assert (TASKS["canny"].show_map(edges) == 255 - edges).all()
    shown = TASKS["hough"].show_map(edges)  # dilated 3x3, then inverted
    assert (shown[3:6, 3:6] == 0).all() and shown.sum() == (64 - 9) * 3 * 255
    assert TASKS["depth"].show_map(edges) is edges
    normal = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    assert (TASKS["normal"].control(normal) == normal[:, :, ::-1]).all()  # the model saw BGR normals
    assert TASKS["depth"].control(normal) is normal


def test_scribble_thresholds():
    img = np.full((4, 4, 3), 255, np.uint8)
    img[1, 1] = 126  # dark enough to be a stroke
    img[2, 2] = 127
    user = tasks.user_scribble_map(None, img, img)
    assert user[1, 1, 0] == 255 and user[2, 2, 0] == 0 and user.sum() == 255 * 3
    canvas = tasks.canvas_map(None, img, 255 - img)  # light strokes on black, as canvas_to_mask gives
    assert canvas[1, 1, 0] == 255 and canvas[2, 2, 0] == 255 and canvas.sum() == 2 * 255 * 3


@pytest.mark.parametrize("tab", ANNOTATOR_TABS, ids=lambda t: t.name)
def test_annotator_tabs_call_their_detector(tab):
    maps = tab.run(StubAnnotators(), np.zeros((64, 96, 3), np.uint8), **{o.key: o.value for o in tab.options})
    assert len(maps) == (2 if tab.name == "midas" else 1) and maps[0].shape[:2] == (64, 96)


# ----------------------------------------------------------------------------------------------- inputs

def test_sixteen_bit_grey_keeps_the_top_byte():
    grey = np.arange(0, 65536, 257, dtype=np.uint16).reshape(16, 16)
    rgb = to_rgb(Image.fromarray(grey))
    assert rgb.shape == (16, 16, 3) and (rgb[:, :, 0] == np.arange(256).reshape(16, 16)).all()


def test_transparency_is_composited_on_white():
    rgba = np.zeros((2, 2, 4), np.uint8)  # black, fully transparent
    assert (to_rgb(Image.fromarray(rgba)) == 255).all()
    la = Image.fromarray(np.zeros((2, 2, 2), np.uint8), mode="LA")
    assert (to_rgb(la) == 255).all()
    palette = Image.new("P", (2, 2), 0)
    palette.info["transparency"] = 0
    assert (to_rgb(palette) == 255).all()


def test_missing_or_oversized_images_are_refused_clearly():
    with pytest.raises(ValueError, match="No input image"):
        to_rgb(None)
    side = int(MAX_INPUT_PIXELS ** 0.5) + 1
    with pytest.raises(ValueError, match="MP.*please downscale"):
        to_rgb(Image.new("L", (side, side)))


def test_canvas_strokes_become_a_white_on_black_mask():
    composite = np.zeros((4, 4, 4), np.uint8)  # transparent background
    composite[1, :] = (0, 0, 0, 255)  # one black stroke
    mask = canvas_to_mask({"background": None, "layers": [], "composite": composite})
    assert (mask[1] == 255).all() and (mask[[0, 2, 3]] == 0).all()
    with pytest.raises(ValueError, match="Nothing drawn"):
        canvas_to_mask({"background": None, "layers": [], "composite": None})


# ------------------------------------------------------------------------------------------ model choice

def test_resolve_model_prefers_real_weights_then_demo_then_nothing(tmp_path):
    real = tmp_path / "control_sd15_canny.pth"
    demo_config, demo_weights = tmp_path / "demo.yaml", tmp_path / "demo.safetensors"
    demo = dict(demo_config=demo_config, demo_weights=demo_weights)

    nothing = resolve_model("canny", [real], **demo)
    assert not nothing.available and "No model weights found" in nothing.banner
    assert str(real) in nothing.banner and "https://huggingface.co/lllyasviel/ControlNet" in nothing.banner

    demo_config.write_text("model: {}")
    demo_weights.write_bytes(b"x")
    fallback = resolve_model("canny", [real], **demo)
    assert fallback.ckpts == (demo_weights,) and fallback.config == demo_config
    assert "demo model" in fallback.banner and str(real) in fallback.banner

    real.write_bytes(b"x")
    chosen = resolve_model("canny", [real], **demo)
    assert chosen.ckpts == (real,) and chosen.banner == "" and chosen.config.name == "cldm_v15.yaml"
    both = resolve_model(["canny", "openpose"], [real, tmp_path / "absent.pth"], **demo)
    assert both.ckpts == (demo_weights, demo_weights) and "absent.pth" in both.banner


def test_default_checkpoint_is_upstreams_path():
    assert resolve_model("hed", demo_weights=Path("/nonexistent")).banner.count("models/control_sd15_hed.pth") == 1


# ---------------------------------------------------------------------------------------------- engine

def test_per_request_settings_never_touch_the_shared_model():
    engine = tiny_engine()
    before = list(engine.model.control_scales)
    hint = np.zeros((64, 64, 3), np.uint8)
    sampling = Sampling(prompt="x", ddim_steps=2, guess_mode=True, seed=5)
    units = [ControlUnit(hint, strength=0.3, start=0.5), ControlUnit(hint, net=engine.extra_nets[0])]
    first, seed = engine.generate(units, sampling)
    assert engine.model.control_scales == before == [1.0] * NUM_CONTROLS and seed == 5
    again, _ = engine.generate(units, sampling)
    assert all((a == b).all() for a, b in zip(first, again))  # seeded per request


def test_seed_minus_one_draws_upstreams_range():
    _, seed = tiny_engine().generate([ControlUnit(np.zeros((64, 64, 3), np.uint8))],
                                     Sampling(ddim_steps=1, seed=-1, num_samples=1))
    assert 0 <= seed <= 65535


def test_invalid_settings_and_maps_are_value_errors():
    with pytest.raises(ValueError, match=r"eta \(0 to 1\) = nan"):
        Sampling(eta=float("nan"))
    with pytest.raises(ValueError, match="Control start must not exceed"):
        ControlUnit(np.zeros((64, 64, 3), np.uint8), start=0.9, end=0.1)
    with pytest.raises(ValueError, match="multiples of 64"):
        tiny_engine().generate([ControlUnit(np.zeros((60, 64, 3), np.uint8))], Sampling())
    with pytest.raises(NoModelError, match="put the weights here"):
        Engine(None, banner="put the weights here").generate([], Sampling())


def test_low_precision_and_save_memory_run():
    engine = Engine(tiny_engine().model, save_memory=True)  # on CPU the shifts are no-ops, the code path runs
    images, _ = engine.generate([ControlUnit(np.zeros((64, 64, 3), np.uint8))], Sampling(ddim_steps=1, seed=1))
    assert images[0].shape == (64, 64, 3) and images[0].dtype == np.uint8


def test_process_reports_sampling_progress():
    steps = []

    def progress(value, desc=None, unit=None):
        steps.append(value)

    task = TASKS["scribble"]
    process = task_process(task, tiny_engine(), StubAnnotators())
    gallery = process(task_kwargs(task, np.full((64, 64, 3), 255, np.uint8)), progress)
    assert len(gallery) == 1 + FAST["num_samples"] and steps == [0, (1, 2), (2, 2)]


def test_event_functions_name_their_api_parameters():
    """Gradio reads the signature: named API parameters, and its progress tracker last (Gradio only tracks
    progress for a positional parameter)."""
    fn = event(["input_image", "low_threshold"], lambda values, progress: (values, progress))
    assert list(inspect.signature(fn).parameters) == ["input_image", "low_threshold", "progress"]
    assert fn(1, low_threshold=2, progress="p") == ({"input_image": 1, "low_threshold": 2}, "p")
    with pytest.raises(TypeError):
        fn(1)  # every input is required
    demo = build_demo(TASKS["hough"], Engine(), StubAnnotators())
    (endpoint,) = [d for d in demo.fns.values() if d.api_name == "run"]
    assert endpoint.tracks_progress  # the page shows a progress bar
    names = list(inspect.signature(endpoint.fn).parameters)
    assert names[:2] == ["input_image", "prompt"] and names[-1] == "progress"
    assert {"detect_resolution", "value_threshold", "distance_threshold", "control_start", "seed"} < set(names)


# ------------------------------------------------------------------------------------------ command line

def test_command_line_flags():
    args = cli.make_parser("x").parse_args([])
    assert (args.host, args.port, args.dtype, args.save_memory, args.ckpt) == ("127.0.0.1", None, "auto", False,
                                                                                None)
    args = cli.make_parser("x").parse_args(["--device", "cpu", "--dtype", "bf16", "--save-memory",
                                            "--ckpt", "a.pth"])
    assert args.device == "cpu" and resolve_dtype(args.dtype, "cpu") is torch.bfloat16 and args.ckpt == [Path("a.pth")]
    assert cli.make_parser("x", num_ckpts=2).parse_args(["--ckpt", "a", "b"]).ckpt == [Path("a"), Path("b")]
    assert not hasattr(cli.make_parser("x", with_model=False).parse_args([]), "ckpt")


def test_an_explicit_missing_checkpoint_stops_at_startup(capsys):
    with pytest.raises(SystemExit):
        cli.main(TASKS["canny"], ["--ckpt", "/nonexistent/control.pth"])
    assert "--ckpt /nonexistent/control.pth: no such file" in capsys.readouterr().err


def test_map_sizes_follow_the_output_size():
    """Canny and scribble maps are computed on the output-size image; the resize keeps that size."""
    resized = cv2.resize(np.full((50, 50, 3), 255, np.uint8), (128, 64))
    assert tasks.canny_map(StubAnnotators(), None, resized, 100, 200).shape == (64, 128, 3)
    assert tasks.resize_to(np.zeros((10, 30, 3), np.uint8), resized).shape == (64, 128, 3)


def test_prompt_joining_and_demo_defaults(tmp_path):
    from cldm.app.engine import Engine, Sampling
    from cldm.app.weights import resolve_model

    assert Sampling(prompt="a dog").full_prompt() == "a dog, best quality, extremely detailed"  # upstream's join
    assert Sampling(prompt="red circle with blue background", added_prompt="").full_prompt() == \
        "red circle with blue background"
    config, weights = tmp_path / "demo.yaml", tmp_path / "demo.safetensors"
    config.write_text("model: {}")
    weights.write_bytes(b"")
    choice = resolve_model("canny", ckpts=[tmp_path / "absent.pth"], demo_config=config, demo_weights=weights)
    assert choice.demo and "tiny demo model" in choice.banner
    demo = Engine(banner=choice.banner, demo=choice.demo).default_sampling
    assert demo.added_prompt == demo.negative_prompt == "" and demo.scale == 2.0
    assert Engine().default_sampling.added_prompt == "best quality, extremely detailed"
    assert Engine().default_sampling.scale == 9.0
