"""Every app served in-process with the tiny model and random-weight annotators, called through gradio_client:
the right number of PNG images of the right size, and bad input answered with a visible error."""
import json
import urllib.request

import cv2
import numpy as np
import pytest
from annotator_weights import random_ckpt_dir
from apps_support import DETECT_RESOLUTION, FAST, client_for, serving, task_kwargs, tiny_engine
from PIL import Image

from annotator.util import resize_image
from cldm.app.annotators import Annotators
from cldm.app.engine import Engine
from cldm.app.tasks import ANNOTATOR_TABS, TASKS
from cldm.app.tasks_v11 import V11_APPS
from cldm.app.ui import build_annotator_demo, build_demo, build_multi_demo
from cldm.app.ui_v11 import build_v11_demo
from cldm.app.weights import resolve_model

pytest.importorskip("gradio_client")
from gradio_client import handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

WEIGHT_FILES = ("ControlNetHED.pth", "mlsd_large_512_fp32.pth", "body_pose_model.pth",
                "dpt_hybrid-midas-501f0c75.pt", "upernet_global_small.pth",
                "table5_pidinet.pth", "sk_model.pth", "netG.pth", "scannet.pt",  # ControlNet 1.1 annotator tabs
                "hand_pose_model.pth", "facenet.pth")  # the 1.1 openpose app's default: Openpose_Full
INPUT_HW = (64, 64)  # square and small: UniFormer upscales to 512 px whatever the input (other tests vary the shape)


@pytest.fixture(scope="module")
def annotators():
    return Annotators(ckpt_dir=random_ckpt_dir(*WEIGHT_FILES))


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A small RGB picture with edges (a bright square on a gradient) as a PNG file."""
    rgb = np.dstack([np.tile(np.linspace(0, 255, INPUT_HW[1], dtype=np.uint8), (INPUT_HW[0], 1))] * 3)
    rgb[16:48, 20:44] = (250, 200, 40)
    path = tmp_path_factory.mktemp("inputs") / "photo.png"
    cv2.imwrite(str(path), rgb[:, :, ::-1])
    return path


def assert_pngs(gallery, count, hw):
    assert len(gallery) == count
    for item in gallery:
        with Image.open(item["image"]) as im:
            assert im.format == "PNG" and im.size == (hw[1], hw[0])


def expected_hw(hw, resolution):
    return resize_image(np.zeros((*hw, 3), np.uint8), resolution).shape[:2]


@pytest.mark.parametrize("name", [n for n, t in TASKS.items() if not t.canvas])
def test_diffusion_app_answers_with_map_and_samples(name, annotators, photo, tmp_path):
    task = TASKS[name]
    with serving(build_demo(task, tiny_engine(), annotators)) as url:
        gallery = client_for(url, tmp_path).predict(**task_kwargs(task, handle_file(photo)), api_name="/run")
    assert_pngs(gallery, 1 + FAST["num_samples"], expected_hw(INPUT_HW, FAST["image_resolution"]))
    assert gallery[1]["caption"] == f"seed {FAST['seed']}"


# Random-weight OpenPose finds hundreds of body parts and then runs its hand and face nets on each (minutes);
# UniFormer always works at 512 px. Their detectors have their own tests (and the 1.0 apps' tests run them).
CHEAP_CHOICE = {"openpose": "None", "seg": "None"}


def v11_kwargs(app, input_image, **overrides) -> dict:
    """A 1.1 app's /run arguments: FAST settings, one image, the app's defaults, its smallest detect resolution."""
    values = {"input_image": input_image, **FAST, "num_samples": 1, "width": 0, "height": 0,
              "resize_mode": "just_resize", **app.default_options()}
    if app.kind == "inpaint":
        values["mask_image"] = None
    else:
        values["preprocessor"] = CHEAP_CHOICE.get(app.name, app.default_choice)
    if app.detect_resolution:
        values["detect_resolution"] = DETECT_RESOLUTION
    return {**values, **overrides}


def editor_value(tmp_path, image_path, stroke=(slice(20, 40), slice(8, 30))):
    """An ImageEditor value as a client sends it: the image, one transparent layer with an opaque stroke."""
    h, w = cv2.imread(str(image_path)).shape[:2]
    layer = np.zeros((h, w, 4), np.uint8)
    layer[stroke] = 255
    cv2.imwrite(str(tmp_path / "layer.png"), layer)
    return {"background": handle_file(image_path), "layers": [handle_file(tmp_path / "layer.png")],
            "composite": handle_file(image_path)}


@pytest.mark.parametrize("name", list(V11_APPS))
def test_v11_app_answers_with_map_and_samples(name, annotators, photo, tmp_path):
    """Every 1.1 app on the tiny model, its default preprocessor (but CHEAP_CHOICE), a non-square output (128 x 64)."""
    app = V11_APPS[name]
    image = editor_value(tmp_path, photo) if app.kind == "inpaint" else handle_file(photo)
    with serving(build_v11_demo(app, tiny_engine(), annotators)) as url:
        gallery = client_for(url, tmp_path / "out").predict(**v11_kwargs(app, image, width=128, height=64),
                                                            api_name="/run")
    assert_pngs(gallery, 2, (64, 128))
    assert gallery[1]["caption"] == f"seed {FAST['seed']}"


@pytest.mark.parametrize("name, overrides, hw", [
    ("canny", dict(preprocessor="None", image_resolution=64), (64, 64)),  # the square photo at 64 px
    ("softedge", dict(preprocessor="SoftEdge_PIDI_safe", height=128), (128, 128)),  # width from the aspect
    ("lineart", dict(preprocessor="Lineart", width=192, height=128, pixel_perfect=True), (128, 192)),
    ("shuffle", dict(preprocessor="Shuffle", width=64, height=192, resize_mode="crop_and_resize"), (192, 64)),
    ("tile", dict(width=192, height=64, denoise_strength=0.5, resize_mode="resize_and_fill"), (64, 192)),
])
def test_v11_app_sizes_and_choices(name, overrides, hw, annotators, photo, tmp_path):
    app = V11_APPS[name]
    with serving(build_v11_demo(app, tiny_engine(), annotators)) as url:
        gallery = client_for(url, tmp_path).predict(**v11_kwargs(app, handle_file(photo), **overrides),
                                                    api_name="/run")
    assert_pngs(gallery, 2, hw)


def test_v11_inpaint_without_mask_is_a_visible_error(photo, tmp_path):
    app = V11_APPS["inpaint"]
    empty = {"background": handle_file(photo), "layers": [], "composite": handle_file(photo)}
    with serving(build_v11_demo(app, tiny_engine(), Annotators())) as url:
        with pytest.raises(AppError, match="No mask"):
            client_for(url, tmp_path).predict(**v11_kwargs(app, empty), api_name="/run")


def test_v11_inpaint_with_uploaded_mask_repaints_only_under_it(photo, tmp_path):
    """The uploaded mask (white = repaint) replaces the drawn one: control -1 (shown black) under it, the photo's
    own pixels pasted back elsewhere."""
    app = V11_APPS["inpaint"]
    mask = np.zeros((64, 64), np.uint8)
    mask[8:24, 40:60] = 255  # over the gradient, away from the bright square
    cv2.imwrite(str(tmp_path / "mask.png"), mask)
    empty = {"background": handle_file(photo), "layers": [], "composite": handle_file(photo)}
    with serving(build_v11_demo(app, tiny_engine(), Annotators())) as url:
        gallery = client_for(url, tmp_path / "out").predict(**v11_kwargs(
            app, empty, mask_image=handle_file(tmp_path / "mask.png"), mask_blur=0.1), api_name="/run")
    shown, result = (np.asarray(Image.open(g["image"]).convert("RGB")).astype(int) for g in gallery)
    photo_rgb = cv2.imread(str(photo))[:, :, ::-1].astype(int)
    assert (shown[8:24, 40:60] == 0).all() and np.abs(shown[32:] - photo_rgb[32:]).max() <= 1
    assert np.abs(result[32:] - photo_rgb[32:]).max() <= 1
    assert np.abs(result[8:24, 40:60] - photo_rgb[8:24, 40:60]).mean() > 5


def test_v11_inpaint_editor_refuses_a_file_that_is_no_image(photo, tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    app = V11_APPS["inpaint"]
    bad = {"background": handle_file(tmp_path / "notes.png"), "layers": [], "composite": handle_file(photo)}
    with serving(build_v11_demo(app, tiny_engine(), Annotators())) as url:
        with pytest.raises(AppError, match="The upload 'notes.png' is not an image"):
            client_for(url, tmp_path / "out").predict(**v11_kwargs(app, bad), api_name="/run")


def test_interactive_scribble_app_reads_black_strokes_on_white(tmp_path):
    task = TASKS["scribble_interactive"]
    composite = np.full((128, 128, 4), 255, np.uint8)
    composite[60:68, 10:118, :3] = 0  # a black horizontal stroke
    layer = np.zeros_like(composite)
    layer[60:68, 10:118, 3] = 255
    for name, array in (("bg", np.full((128, 128, 3), 255, np.uint8)), ("layer", layer), ("composite", composite)):
        cv2.imwrite(str(tmp_path / f"{name}.png"), array)
    canvas = {"background": handle_file(tmp_path / "bg.png"), "layers": [handle_file(tmp_path / "layer.png")],
              "composite": handle_file(tmp_path / "composite.png")}
    with serving(build_demo(task, tiny_engine(), Annotators())) as url:
        client = client_for(url, tmp_path / "out")
        blank = client.predict(256, 320, api_name="/open_canvas")
        gallery = client.predict(**task_kwargs(task, canvas), api_name="/run")
    assert Image.open(blank["background"]).size == (256, 320)
    assert_pngs(gallery, 3, (64, 64))
    shown = np.asarray(Image.open(gallery[0]["image"]).convert("L"))  # strokes shown black on white
    assert (shown[30:34, 6:58] == 0).all() and (shown[:28] == 255).all() and (shown[36:] == 255).all()


def test_multi_app_composes_two_controlnets(annotators, photo, tmp_path):
    """The second image (another shape, used as a map as is) is fitted to the first one's output size."""
    cv2.imwrite(str(tmp_path / "map.png"), np.random.default_rng(0).integers(0, 256, (40, 90, 3), dtype=np.uint8))
    with serving(build_multi_demo([TASKS["canny"], TASKS["hed"]], tiny_engine(), annotators)) as url:
        sampling = {k: v for k, v in FAST.items()
                    if k not in ("strength", "control_start", "control_end", "control_mode")}
        units = dict(input_image_1=handle_file(photo), preprocessor_1="canny",
                     input_image_2=handle_file(tmp_path / "map.png"), preprocessor_2="none", strength_2=0.5,
                     control_start_2=0.2, control_end_2=0.8, control_mode_2="My prompt is more important")
        gallery = client_for(url, tmp_path).predict(**sampling, **units, api_name="/run")
    assert_pngs(gallery, 2 + FAST["num_samples"], expected_hw(INPUT_HW, FAST["image_resolution"]))


@pytest.mark.parametrize("tab", [t for t in ANNOTATOR_TABS if t.name != "uniformer"], ids=lambda t: t.name)
def test_annotator_app_tabs(tab, annotators, photo, tmp_path):
    """UniFormer always runs at 512 px (slow on CPU): the seg app test covers it."""
    with serving(build_annotator_demo(annotators)) as url:
        gallery = client_for(url, tmp_path).predict(input_image=handle_file(photo), resolution=256,
                                                    api_name=f"/{tab.name}")
    assert_pngs(gallery, 2 if tab.name == "midas" else 1, expected_hw(INPUT_HW, 256))


# ------------------------------------------------------------------------------------------ bad input

@pytest.fixture(scope="module")
def canny_app(tmp_path_factory):
    """One Canny app and client shared by the bad-input tests: it must survive all of them."""
    with serving(build_demo(TASKS["canny"], tiny_engine(), Annotators())) as url:
        yield client_for(url, tmp_path_factory.mktemp("downloads"))


def run_canny(client, image, **overrides):
    return client.predict(**task_kwargs(TASKS["canny"], image, **overrides), api_name="/run")


def test_no_image_is_a_visible_error(canny_app):
    with pytest.raises(AppError, match="No input image"):
        run_canny(canny_app, None)


@pytest.mark.parametrize("kind", ["grey", "rgba", "16-bit"])
def test_other_image_modes_are_converted(kind, canny_app, tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    array = {"grey": rgb[:, :, 0], "rgba": np.dstack([rgb, np.full((40, 60), 128, np.uint8)]),
             "16-bit": rgb[:, :, 0].astype(np.uint16) * 257}[kind]
    cv2.imwrite(str(tmp_path / "in.png"), array)
    assert_pngs(run_canny(canny_app, handle_file(tmp_path / "in.png"), num_samples=1), 2, expected_hw((40, 60), 64))


def test_huge_photo_is_downscaled(canny_app, tmp_path):
    h, w = 4000, 6000
    gradient = (np.add.outer(np.arange(h) // 16, np.arange(w) // 24) % 256).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "big.jpg"), gradient, [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert_pngs(run_canny(canny_app, handle_file(tmp_path / "big.jpg"), num_samples=1), 2, expected_hw((h, w), 64))


@pytest.mark.parametrize("overrides, message", [
    (dict(num_samples=13), "greater than maximum"),
    (dict(image_resolution=4096), "greater than maximum"),
    (dict(ddim_steps=0), "less than minimum"),
    (dict(seed=-2), "less than minimum"),
    (dict(eta=-1.0), "less than minimum"),
    (dict(control_start=0.8, control_end=0.2), "Control start must not exceed Control end"),
    (dict(low_threshold=300), "greater than maximum"),
])
def test_out_of_range_numbers_are_refused(overrides, message, canny_app, photo):
    with pytest.raises(AppError, match=message):
        run_canny(canny_app, handle_file(photo), **overrides)


def test_two_concurrent_requests_both_finish(canny_app, photo):
    jobs = [canny_app.submit(**task_kwargs(TASKS["canny"], handle_file(photo), seed=s), api_name="/run")
            for s in (1, 2)]
    results = [job.result(timeout=120) for job in jobs]
    assert [g[1]["caption"] for g in results] == ["seed 1", "seed 2"]


def test_server_still_serves_after_bad_input(canny_app, photo):
    with pytest.raises(AppError):
        run_canny(canny_app, None)
    assert_pngs(run_canny(canny_app, handle_file(photo)), 3, expected_hw(INPUT_HW, 64))


def test_missing_annotator_weights_name_file_path_and_url(photo, tmp_path):
    empty = tmp_path / "no-weights"
    empty.mkdir()
    with serving(build_demo(TASKS["hed"], tiny_engine(), Annotators(ckpt_dir=empty))) as url:
        with pytest.raises(AppError) as error:
            client_for(url, tmp_path).predict(**task_kwargs(TASKS["hed"], handle_file(photo)), api_name="/run")
    message = str(error.value)
    assert "ControlNetHED.pth" in message and str(empty) in message and "https://huggingface.co/" in message


def test_app_without_any_model_starts_shows_banner_and_refuses_run(photo, tmp_path):
    choice = resolve_model("canny", [tmp_path / "control_sd15_canny.pth"], demo_weights=tmp_path / "absent")
    demo = build_demo(TASKS["canny"], Engine.load(choice), Annotators())
    with serving(demo) as url:
        with urllib.request.urlopen(url + "config") as response:
            assert "No model weights found" in json.dumps(json.load(response))
        with pytest.raises(AppError, match="No model weights found.*control_sd15_canny.pth"):
            client_for(url, tmp_path).predict(**task_kwargs(TASKS["canny"], handle_file(photo), image_resolution=256),
                                              api_name="/run")
