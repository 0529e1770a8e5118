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
from cldm.app.tasks_v11 import NONE, V11_APPS, tile_control
from cldm.app.ui import build_demo, event, task_process
from cldm.app.ui_v11 import defaults_for, editor_image_and_mask, output_size
from cldm.app.weights import resolve_model, scan_controls
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
    assert len(ROOT_SCRIPTS) == 12 + len(V11_APPS)
    entry_points = set()
    for name in ROOT_SCRIPTS:
        text = (ROOT / name).read_text()
        assert len(text.splitlines()) <= 40, name
        call = re.search(r'if __name__ == "__main__":\n    (.+)\n', text).group(1)
        entry_points.add(call)
        assert "launch(" not in text.split("__main__")[0]  # nothing is served on import
    assert len(entry_points) == 12 + len(V11_APPS)
    assert {f"main(tasks.{n})" for n in ("CANNY", "HOUGH", "HED", "SCRIBBLE", "SCRIBBLE_INTERACTIVE", "FAKE_SCRIBBLE",
                                         "POSE", "SEG", "DEPTH", "NORMAL")} < entry_points
    assert {f'main(V11_APPS["{n}"])' for n in V11_APPS} < entry_points
    assert {f"gradio_{n}_v11.py" for n in V11_APPS} < set(ROOT_SCRIPTS)


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


# ------------------------------------------------------------------------------------------ 1.1 apps

def test_v11_records_keep_upstream_defaults():
    """Upstream ControlNet-v1-1-nightly's gradio_<name>.py: checkpoints, radios, prompts, steps, ranges."""
    assert {a.checkpoint for a in V11_APPS.values()} == {
        f"control_v11{v}_sd15{s}_{n}" for v, s, n in (
            ("p", "", "canny"), ("p", "", "mlsd"), ("f1p", "", "depth"), ("p", "", "normalbae"), ("p", "", "seg"),
            ("p", "", "inpaint"), ("p", "", "lineart"), ("p", "s2", "lineart_anime"), ("p", "", "openpose"),
            ("p", "", "scribble"), ("p", "", "softedge"), ("e", "", "shuffle"), ("e", "", "ip2p"),
            ("f1e", "", "tile"))}
    assert V11_APPS["canny"].choices == ("Canny", NONE) and V11_APPS["ip2p"].choices == (NONE,)
    assert V11_APPS["softedge"].choices[:4] == ("SoftEdge_PIDI", "SoftEdge_PIDI_safe", "SoftEdge_HED",
                                                "SoftEdge_HED_safe")
    assert V11_APPS["openpose"].default_choice == "Openpose_Full"
    assert V11_APPS["shuffle"].default_choice == NONE and V11_APPS["lineart_anime"].default_choice == NONE
    real = Engine(None)
    canny = defaults_for(V11_APPS["canny"], real)
    assert (canny.seed, canny.eta, canny.ddim_steps, canny.scale) == (12345, 1.0, 20, 9.0)
    assert canny.added_prompt == "best quality"
    assert canny.negative_prompt == "lowres, bad anatomy, bad hands, cropped, worst quality"
    tile = defaults_for(V11_APPS["tile"], real)
    assert tile.ddim_steps == 32 and tile.negative_prompt.startswith("blur, lowres")
    assert V11_APPS["tile"].max_resolution == 2048 and V11_APPS["tile"].default_options() == {"denoise_strength": 1.0}
    assert V11_APPS["inpaint"].default_options() == {"mask_blur": 5.0}
    demo = defaults_for(V11_APPS["canny"], Engine(None, demo=True))  # the demo model keeps its own prompts
    assert (demo.added_prompt, demo.negative_prompt, demo.seed, demo.eta) == ("", "", 12345, 1.0)


def test_v11_map_rules():
    """Maps land at the output size; lineart feeds the ControlNet 255 - map; scribble thins any map to 0/255."""
    image = np.random.default_rng(0).integers(0, 256, (64, 128, 3), dtype=np.uint8)
    lineart = V11_APPS["lineart"]
    found = lineart.make_map(StubAnnotators, image, "Lineart", 128)
    assert found.shape == (64, 128, 3) and np.array_equal(lineart.control(found), 255 - found)
    assert np.array_equal(lineart.make_map(StubAnnotators, image, NONE, 128), image)  # None: the upload itself
    scribble = V11_APPS["scribble"].make_map(StubAnnotators, image, NONE, 128)
    assert set(np.unique(scribble)) <= {0, 255}
    assert V11_APPS["canny"].control(found) is found
    with pytest.raises(ValueError, match="unknown preprocessor 'Zoe'"):
        V11_APPS["depth"].make_map(StubAnnotators, image, "Zoe", 128)
    shuffled = [V11_APPS["shuffle"].make_map(StubAnnotators, image, "Shuffle", 64, seed=s) for s in (1, 1, 2)]
    assert np.array_equal(shuffled[0], shuffled[1]) and not np.array_equal(shuffled[0], shuffled[2])


def test_pixel_perfect_detects_at_the_output_size():
    """Pixel Perfect: the detector sees the fitted input at its own size, whatever Preprocessor Resolution says."""
    from cldm.app.ui_v11 import v11_process
    seen = []

    class Recording(StubAnnotators):
        @staticmethod
        def pidinet(img, safe=False):
            seen.append(img.shape[:2])
            return StubAnnotators._map(img)

    engine = tiny_engine()
    process = v11_process(V11_APPS["softedge"], engine, Recording)
    values = dict(FAST, input_image=np.zeros((50, 100, 3), np.uint8), num_samples=1, preprocessor="SoftEdge_PIDI",
                  width=128, height=64, resize_mode="just_resize", detect_resolution=512, pixel_perfect=True)
    gallery = process(values, lambda *a, **k: None)
    process({**values, "pixel_perfect": False}, lambda *a, **k: None)
    assert seen == [(64, 128), (512, 1024)] and gallery[0][0].shape == (64, 128, 3)


def test_tile_control_is_the_image_at_one_eighth_enlarged():
    image = np.zeros((64, 128, 3), np.uint8)
    image[:, 64:] = 200
    control = tile_control(image)
    assert control.shape == image.shape
    assert control[:, :56].max() < 30 and control[:, 72:].min() > 170  # blurred at the edge only


@pytest.mark.parametrize("image_hw, resolution, width, height, expected", [
    ((64, 128), 64, 0, 0, (128, 64)),  # the input's aspect, short side at Image Resolution
    ((64, 128), 64, 192, 64, (192, 64)),
    ((64, 128), 512, 0, 128, (256, 128)),  # width from the aspect
    ((100, 50), 512, 320, 0, (320, 640)),
])
def test_v11_output_size(image_hw, resolution, width, height, expected):
    assert output_size(np.zeros((*image_hw, 3), np.uint8), resolution, width, height) == expected


def test_editor_value_gives_image_and_mask():
    background = Image.new("RGBA", (8, 6), (10, 20, 30, 255))
    layer = np.zeros((6, 8, 4), np.uint8)
    layer[1:3, 2:5, 3] = 255
    image, mask = editor_image_and_mask({"background": background, "layers": [Image.fromarray(layer)],
                                         "composite": background})
    assert image.shape == (6, 8, 3) and (image == (10, 20, 30)).all()
    assert mask.sum() == 6 * 255 and (mask[1:3, 2:5] == 255).all()
    assert editor_image_and_mask({"background": background, "layers": [], "composite": background})[1] is None
    with pytest.raises(ValueError, match="No input image"):
        editor_image_and_mask({"background": None, "layers": [], "composite": None})


def test_v11_apps_find_their_own_file_not_the_10_one(tmp_path):
    (tmp_path / "control_sd15_canny.pth").touch()
    assert scan_controls("control_v11p_sd15_canny", tmp_path) is None
    (tmp_path / "control_v11p_sd15_canny_fp16.safetensors").touch()
    (tmp_path / "control_v11p_sd15_canny_extra.pth").touch()
    assert scan_controls("control_v11p_sd15_canny", tmp_path).name == "control_v11p_sd15_canny_fp16.safetensors"
    (tmp_path / "control_v11p_sd15_canny.pth").touch()
    assert scan_controls("control_v11p_sd15_canny", tmp_path).name == "control_v11p_sd15_canny.pth"
    choice = resolve_model("control_v11f1e_sd15_tile", models_dir=tmp_path, demo_weights=tmp_path / "absent")
    assert "control_v11f1e_sd15_tile.pth" in choice.banner and "ControlNet-v1-1" in choice.banner


def test_float_hint_reaches_the_controlnet_unscaled():
    """1.1 inpaint: masked pixels are -1 in the ControlNet's hint (upstream: -255 / 255), others image / 255."""
    from annotator.inpaint import inpaint_control
    from cldm.generate import _hint
    image = np.full((16, 24, 3), 51, np.uint8)
    mask = np.zeros((16, 24), np.uint8)
    mask[4:12, 8:16] = 255
    hint = _hint(inpaint_control(image, mask, 0.1), 24, 16, "just_resize", "cpu")
    assert hint.shape == (1, 3, 16, 24) and hint.dtype == torch.float32
    assert (hint[0, :, 4:12, 8:16] == -1).all() and torch.allclose(hint[0, :, :4], torch.tensor(0.2))


def _initial_values(demo) -> dict:
    return {block.label: block.value for block in demo.blocks.values()
            if getattr(block, "label", None) and hasattr(block, "value")}


def test_pages_start_with_their_own_defaults():
    """The 1.1 pages start with 1.1's settings; the 1.0 pages keep 1.0's (random seed, eta 0, 1.0 prompts)."""
    from cldm.app.ui_v11 import build_v11_demo
    engine = Engine(None)
    v11 = _initial_values(build_v11_demo(V11_APPS["tile"], engine, StubAnnotators()))
    assert (v11["Seed"], v11["eta (DDIM)"], v11["Steps"], v11["Preprocessor"]) == (12345, 1.0, 32, NONE)
    assert v11["Added Prompt"] == "best quality" and v11["Negative Prompt"].startswith("blur, lowres")
    assert v11["Denoising Strength"] == 1.0 and v11["Width"] == 0 and v11["Resize Mode"] == "just_resize"
    v10 = _initial_values(build_demo(TASKS["canny"], engine, StubAnnotators()))
    assert v10["eta (DDIM)"] == 0.0 and v10["Steps"] == 20 and "Preprocessor" not in v10 and "Width" not in v10
    assert v10["Added Prompt"] == "best quality, extremely detailed" and v10["Negative Prompt"].startswith("longbody")
