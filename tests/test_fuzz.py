"""Fuzz suite: seeded hostile inputs to the apps, the checkpoint loader and the training data set.

Every input must end in a *clear error* (one of the project's error types, a non-empty message without a
traceback or a server temporary path, naming the file where there is one) or a *valid result*; nothing may
crash, hang or run pickled code, and the app server must keep serving. The inputs are generated from one
seed (FUZZ_SEED), so a failure is reproducible; each test prints its count per kind of input.

Images go through the app's own upload path in-process (a sample also through a real server), API parameters
through the server's raw REST API (JSON with NaN/Infinity, wrong types, huge strings), checkpoints through
`load_checkpoint` into the tiny test ControlLDM, data sets through `PromptDataset`.
"""
import io
import json
import math
import os
import pickle
import shutil
import struct
import time
import zlib
from collections import Counter
from pathlib import Path

import cv2
import gradio as gr
import httpx
import numpy as np
import pytest
import torch
from apps_support import free_port, tiny_engine
from conftest import build_tiny
from PIL import Image

from cldm.app.annotators import Annotators
from cldm.app.images import to_rgb
from cldm.app.tasks import TASKS
from cldm.app.ui import _image_input, build_demo, launch
from cldm.app.weights import DEMO_CONFIG, DEMO_WEIGHTS
from cldm.model import CheckpointError, create_model, load_checkpoint, save_state_dict
from training import fill50k
from training.dataset import DatasetError, PromptDataset

FUZZ_SEED = 22
PER_INPUT_LIMIT_S = 10.0  # "no hang": any single input taking longer fails the suite
SENTINEL = "fuzz_pickle_ran"  # created by the pickled payloads if they ever run


def report(category: str, kinds: Counter, outcomes: Counter) -> None:
    total = sum(kinds.values())
    detail = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
    print(f"\nfuzz {category}: {total} inputs ({outcomes['error']} clear errors, {outcomes['valid']} valid results)"
          f" - {detail}")


def assert_clear(message: str, *names: str) -> None:
    assert message.strip(), "empty error message"
    assert "Traceback" not in message and "/tmp/gradio" not in message, message
    for name in names:
        assert name in message, f"{name!r} not named in: {message}"


def timed(fn):
    start = time.monotonic()
    result = fn()
    assert time.monotonic() - start < PER_INPUT_LIMIT_S, "input took too long"
    return result


# ------------------------------------------------------------------------------------------ images

def _png(width: int, height: int, depth: int = 8, colour: int = 2, pixels: bytes = b"") -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(pixels)) + chunk(b"IEND", b""))


def _bmp(width: int, height: int) -> bytes:
    header = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 54 + 12, 0, 0, 54) + header + b"\0" * 12


def _gif(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00" + b",\0\0\0\0" + struct.pack(
        "<HH", width, height) + b"\x00\x02\x02\x44\x01\x00;"


def _jpeg_sof(width: int, height: int) -> bytes:
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + sof + b"\xff\xd9"


MODES = {  # PIL mode -> formats that can store it
    "1": ("PNG", "BMP", "TIFF"), "L": ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF"), "P": ("PNG", "GIF", "BMP"),
    "RGB": ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "PPM"), "RGBA": ("PNG", "WEBP", "TIFF"), "LA": ("PNG",),
    "I;16": ("PNG", "TIFF"), "I": ("PNG", "TIFF"), "F": ("TIFF",), "CMYK": ("JPEG", "TIFF"),
    "YCbCr": ("JPEG",), "LAB": ("TIFF",), "PA": ("PNG", "GIF"),
}


def _random_image(rng, mode: str, size) -> Image.Image:
    w, h = size
    if mode in ("I", "I;16"):
        return Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16).astype(
            np.int32 if mode == "I" else np.uint16), mode="I" if mode == "I" else "I;16")
    if mode == "F":
        return Image.fromarray(rng.standard_normal((h, w)).astype(np.float32) * 1e3)
    rgb = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    if mode == "PA":
        return rgb.convert("P").convert("PA")
    return rgb.convert(mode)


def image_inputs(rng):
    """(kind, file name, bytes) of hostile and odd image uploads."""
    cases = []
    valid = []
    for mode, formats in MODES.items():
        for fmt in formats:
            size = (int(rng.integers(1, 80)), int(rng.integers(1, 80)))
            buffer = io.BytesIO()
            try:
                _random_image(rng, mode, size).save(buffer, fmt)
            except (OSError, ValueError, KeyError):  # this PIL cannot write that mode in that format
                continue
            data = buffer.getvalue()
            cases.append(("mode/depth", f"{mode.replace(';', '')}.{fmt.lower()}", data))
            valid.append((fmt.lower(), data))
    for depth, colour in ((16, 2), (16, 0), (1, 0), (2, 3), (4, 0), (16, 6)):  # raw PNG bit depths, no pixels
        cases.append(("mode/depth", f"depth{depth}_{colour}.png", _png(8, 8, depth, colour, b"\0" * 300)))
    grey16 = cv2.imencode(".png", rng.integers(0, 65536, (20, 30, 3), dtype=np.uint16))[1].tobytes()
    cases.append(("mode/depth", "rgb16.png", grey16))
    for i in range(30):  # valid files cut anywhere
        fmt, data = valid[int(rng.integers(len(valid)))]
        cut = int(rng.integers(1, max(2, len(data) - 1)))
        cases.append(("truncated", f"cut{i}.{fmt}", data[:cut]))
    magics = [b"", b"\0" * 64, b"hello, I am text\n" * 5, b"<html><body>hi</body></html>", b"%PDF-1.4\n" + b"x" * 50,
              b"PK\x03\x04" + b"\0" * 40, b"\x89PNG\r\n\x1a\n", b"\x89PNG\r\n\x1a\n" + bytes(rng.integers(0, 256, 64)),
              b"\xff\xd8\xff" + bytes(rng.integers(0, 256, 64)), b"GIF89a" + bytes(rng.integers(0, 256, 32)),
              b"BM" + bytes(rng.integers(0, 256, 60)), b"RIFF\0\0\0\0WEBPVP8 " + bytes(rng.integers(0, 256, 40)),
              b"II*\0" + bytes(rng.integers(0, 256, 60)), b"<svg xmlns='http://www.w3.org/2000/svg'/>"]
    for i, data in enumerate(magics):
        cases.append(("wrong magic", f"magic{i}.png", data))
    for i in range(6):
        cases.append(("wrong magic", f"noise{i}.jpg", bytes(rng.integers(0, 256, int(rng.integers(1, 4000))))))
    for w, h in ((65535, 65535), (2**31 - 1, 1), (1, 2**31 - 1), (30000, 30000), (9000, 9000), (100000, 10)):
        cases.append(("huge header", f"huge_{w}x{h}.png", _png(w, h)))
    for w, h in ((65535, 65535), (20000, 20000)):
        cases.append(("huge header", f"huge_{w}x{h}.gif", _gif(w, h)))
        cases.append(("huge header", f"huge_{w}x{h}.bmp", _bmp(w, h)))
        cases.append(("huge header", f"huge_{w}x{h}.jpg", _jpeg_sof(w, h)))
    for w, h in ((0, 0), (0, 16), (16, 0)):
        cases.append(("zero-size", f"zero_{w}x{h}.png", _png(w, h)))
        cases.append(("zero-size", f"zero_{w}x{h}.gif", _gif(w, h)))
        cases.append(("zero-size", f"zero_{w}x{h}.bmp", _bmp(w, h)))
    return cases


def _upload(image_input, path: Path, name: str):
    """What the app does with an upload: Gradio's preprocess (wrapped by the app) then `to_rgb`."""
    from gradio.data_classes import ImageData
    try:
        picture = image_input.preprocess(ImageData(path=str(path), orig_name=name))
        rgb = to_rgb(picture)
    except gr.Error as e:
        assert_clear(str(e.message), name)
        return "error"
    except ValueError as e:  # to_rgb's own refusals
        assert_clear(str(e))
        return "error"
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 and min(rgb.shape[:2]) >= 1
    assert rgb.shape[:2] == (picture.size[1], picture.size[0])
    return "valid"


def test_fuzz_images(tmp_path, capsys):
    rng = np.random.default_rng(FUZZ_SEED)
    cases = image_inputs(rng)
    image_input = _image_input()
    kinds, outcomes = Counter(), Counter()
    for i, (kind, name, data) in enumerate(cases):
        path = tmp_path / f"{i}_{name}"
        path.write_bytes(data)
        outcomes[timed(lambda: _upload(image_input, path, name))] += 1
        kinds[kind] += 1
    assert outcomes["error"] >= 40 and outcomes["valid"] >= 20
    with capsys.disabled():
        report("images", kinds, outcomes)


# ------------------------------------------------------------------------------------------ the server

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The Canny app on the tiny test model (tests/configs, 64 px), on loopback, with its REST API."""
    demo = build_demo(TASKS["canny"], tiny_engine(), Annotators())
    _, url, _ = launch(demo, port=free_port(), prevent_thread_lock=True, quiet=True, max_file_size="1mb")
    info = httpx.get(url + "gradio_api/info").json()["named_endpoints"]["/run"]["parameters"]
    try:
        yield url, info
    finally:
        demo.close()


def upload(url: str, name: str, data: bytes):
    response = httpx.post(url + "gradio_api/upload", files={"files": (name, data)}, timeout=30)
    return response.status_code, (response.json()[0] if response.status_code == 200 else response.text)


def call(url: str, params, values: dict):
    """POST /call/run with raw JSON (NaN and Infinity allowed, as a hostile client may send) -> ('valid',
    gallery) or ('error', message)."""
    data = [values.get(p["parameter_name"], p.get("parameter_default")) for p in params]
    body = json.dumps({"data": data}, allow_nan=True)
    response = httpx.post(url + "gradio_api/call/run", content=body, headers={"content-type": "application/json"},
                          timeout=30)
    if response.status_code != 200:
        assert 400 <= response.status_code < 500, response.text
        return "error", response.text
    event = response.json()["event_id"]
    with httpx.stream("GET", url + f"gradio_api/call/run/{event}", timeout=60) as stream:
        text = "".join(stream.iter_text())
    kind = next(line[len("event: "):] for line in reversed(text.splitlines()) if line.startswith("event: "))
    payload = json.loads(text.strip().splitlines()[-1][len("data: "):])
    if kind == "complete":
        return "valid", payload
    assert kind == "error", text
    return "error", (payload or {}).get("error") or ""


FAST = dict(prompt="red circle with blue background", num_samples=1, image_resolution=64, ddim_steps=1, seed=3)
HOSTILE_NUMBERS = [math.nan, math.inf, -math.inf, -1, 0, 1e308, -1e308, 10**30, 2**63, "abc", "", None, True, [],
                   {}, "1e3", [1, 2], 0.5, 1]
HOSTILE_TEXT = ["", None, 5, 1.5, [], {"a": 1}, "\0\0\0", "\u202e\u200b" * 100, "ß" * 5000, "x" * 200_000,
                "<script>alert(1)</script>", "'; DROP TABLE x; --", "🙂" * 3000, "\ud800"]


def _ok_gallery(gallery) -> None:
    items = gallery[0]
    assert len(items) == 2 and all(item["image"]["path"] for item in items)


def test_fuzz_api_parameters(server, capsys):
    url, params = server
    rng = np.random.default_rng(FUZZ_SEED + 1)
    status, photo = upload(url, "circle.png", cv2.imencode(".png", cv2.circle(
        np.zeros((128, 128, 3), np.uint8), (64, 64), 40, (255, 255, 255), 3))[1].tobytes())
    assert status == 200
    image = {"path": photo, "meta": {"_type": "gradio.FileData"}, "orig_name": "circle.png"}
    numeric = ["num_samples", "image_resolution", "strength", "control_start", "control_end", "low_threshold",
               "high_threshold", "ddim_steps", "scale", "seed", "eta"]
    text = ["prompt", "added_prompt", "negative_prompt"]
    names = {p["parameter_name"] for p in params}
    cases = []
    for name in numeric:
        for value in rng.permutation(np.array(HOSTILE_NUMBERS, dtype=object))[:5]:
            cases.append(("number", {name: value}))
    for name in text:
        for value in rng.permutation(np.array(HOSTILE_TEXT, dtype=object))[:4]:
            cases.append(("text", {name: value}))
    if "control_mode" in names:
        for value in ("", "nope", None, 3, ["Balanced"], "Balanced"):
            cases.append(("choice", {"control_mode": value}))
    for value in ("/etc/passwd", {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}, 5, [], {},
                  {"path": None, "url": "data:image/png;base64,iVBORw0KGgo=", "meta": {"_type": "gradio.FileData"}},
                  {"path": photo}, None):
        cases.append(("image parameter", {"input_image": value}))
    for _ in range(4):  # several at once
        picked = [str(n) for n in rng.choice(numeric, 3, replace=False)]
        cases.append(("mixed", {n: HOSTILE_NUMBERS[int(rng.integers(len(HOSTILE_NUMBERS)))] for n in picked}))
    kinds, outcomes = Counter(), Counter()
    for kind, overrides in cases:
        values = {"input_image": image, **FAST, **overrides}
        outcome, detail = timed(lambda: call(url, params, values))
        if outcome == "valid":
            _ok_gallery(detail)
        else:
            assert_clear(str(detail))
        kinds[kind] += 1
        outcomes[outcome] += 1
    assert call(url, params, {"input_image": image, **FAST})[0] == "valid"  # still serving
    assert outcomes["error"] >= 35 and outcomes["valid"] >= 5
    with capsys.disabled():
        report("API parameters", kinds, outcomes)


def test_fuzz_uploads_through_the_server(server, tmp_path, capsys):
    """A sample of the hostile images, uploaded and run through the real server; it keeps serving."""
    url, params = server
    rng = np.random.default_rng(FUZZ_SEED + 2)
    cases = image_inputs(rng)
    picked = [cases[int(i)] for i in rng.choice(len(cases), 18, replace=False)]
    picked.append(("oversized", "big.png", bytes(rng.integers(0, 256, 1_100_000, dtype=np.uint8))))
    kinds, outcomes = Counter(), Counter()
    for kind, name, data in picked:
        status, path = upload(url, name, data)
        if status != 200:
            assert status == 413, path
            outcome = "error"
        else:
            image = {"path": path, "meta": {"_type": "gradio.FileData"}, "orig_name": name}
            outcome, detail = timed(lambda: call(url, params, {"input_image": image, **FAST}))
            if outcome == "error":
                assert_clear(str(detail))
        kinds[kind] += 1
        outcomes[outcome] += 1
    ok = cv2.imencode(".png", np.full((64, 64, 3), 200, np.uint8))[1].tobytes()
    image = {"path": upload(url, "ok.png", ok)[1], "meta": {"_type": "gradio.FileData"}, "orig_name": "ok.png"}
    assert call(url, params, {"input_image": image, **FAST})[0] == "valid"
    with capsys.disabled():
        report("uploads through the server", kinds, outcomes)


# ------------------------------------------------------------------------------------------ checkpoints

class _Code:
    """Unpickling this runs `fn(*args)`: what a malicious checkpoint does."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def checkpoint_inputs(rng, good: dict, folder: Path):
    """(kind, path) of hostile checkpoint files; `good` is a valid state dict of the tiny model."""
    cases = []
    keys = sorted(good)
    good = {k: v.half() if v.is_floating_point() else v for k, v in good.items()}  # (half the bytes to write)

    def save(kind, name, sd):
        path = folder / name
        if name.endswith(".safetensors"):
            save_state_dict(sd, str(path))
        else:
            torch.save(sd, path)
        cases.append((kind, path))

    def raw(kind, name, data: bytes):
        path = folder / name
        path.write_bytes(data)
        cases.append((kind, path))

    for ext in (".safetensors", ".pth", ".ckpt", ".bin"):
        raw("empty", f"empty{ext}", b"")
    save_state_dict(good, str(folder / "good.safetensors"))
    torch.save({"state_dict": good}, folder / "good.ckpt")
    for source in ("good.safetensors", "good.ckpt"):
        data = (folder / source).read_bytes()
        for cut in rng.integers(1, len(data) - 1, 8):
            raw("truncated", f"cut{int(cut)}_{source}", data[: int(cut)])
    for i in range(4):
        raw("garbage", f"noise{i}.{['safetensors', 'pth'][i % 2]}", bytes(rng.integers(0, 256, 5000, dtype=np.uint8)))
    raw("garbage", "header_huge.safetensors", struct.pack("<Q", 2**62) + b"{}")
    raw("garbage", "header_lies.safetensors", (lambda h: struct.pack("<Q", len(h)) + h)(json.dumps(
        {"w": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 4 * 10**12]}}).encode()))
    raw("garbage", "header_not_json.safetensors", struct.pack("<Q", 5) + b"{{{{{")
    for i in range(3):
        dropped = set(rng.choice(keys, int(rng.integers(1, 20)), replace=False))
        save("wrong keys", f"dropped{i}.safetensors", {k: v for k, v in good.items() if k not in dropped})
    save("wrong keys", "renamed.pth", {"module." + k: v for k, v in good.items()})
    save("wrong keys", "extra.safetensors", {**good, "lora_unet.down.weight": torch.zeros(2, 2)})
    save("wrong keys", "empty_dict.pth", {})
    save("wrong keys", "not_tensors.pth", {"state_dict": {"a": 1, "b": "x"}})
    save("wrong keys", "a_list.pth", [torch.zeros(2)])
    save("wrong keys", "a_tensor.pth", torch.zeros(3))
    float_keys = [k for k in keys if good[k].is_floating_point() and good[k].ndim >= 1]
    for i in range(4):
        key = float_keys[int(rng.integers(len(float_keys)))]
        shape = list(good[key].shape)
        shape[int(rng.integers(len(shape)))] += int(rng.integers(1, 3))
        save("wrong shapes", f"shape{i}.safetensors", {**good, key: torch.zeros(shape)})
    for i, dtype in enumerate((torch.int64, torch.int8, torch.bool, torch.complex64, torch.uint8)):
        key = float_keys[int(rng.integers(len(float_keys)))]
        save("wrong dtypes", f"dtype{i}.pth", {**good, key: torch.zeros(good[key].shape, dtype=dtype)})
    for i, dtype in enumerate((torch.bfloat16, torch.float32)):  # other precisions: valid
        save("other precisions", f"precision{i}.pth", {k: v.to(dtype) if v.is_floating_point() else v
                                                       for k, v in good.items()})
    sentinel = str(folder / SENTINEL)
    payloads = [_Code(os.system, f"touch {sentinel}"), _Code(eval, f"open({sentinel!r}, 'w')"),
                _Code(exec, f"open({sentinel!r}, 'w')"), _Code(open, sentinel, "w"),
                _Code(shutil.copy, __file__, sentinel)]
    for i, payload in enumerate(payloads):
        for protocol in (0, 2, 4):
            raw("pickled code", f"evil{i}_p{protocol}.ckpt", pickle.dumps({"state_dict": {"w": payload}}, protocol))
        torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": payload}, folder / f"evil{i}_zip.pth")
        cases.append(("pickled code", folder / f"evil{i}_zip.pth"))
    return cases


def test_fuzz_checkpoints(tmp_path, capsys):
    rng = np.random.default_rng(FUZZ_SEED + 3)
    model = build_tiny()
    good = {k: v.clone() for k, v in model.state_dict().items()}
    cases = checkpoint_inputs(rng, good, tmp_path)
    kinds, outcomes = Counter(), Counter()
    for kind, path in cases:
        try:
            report_ = timed(lambda: load_checkpoint(model, str(path)))
            outcome = "valid"
            assert not report_.unexpected and not report_.missing
            assert all(torch.isfinite(p).all() for p in model.parameters())
        except (CheckpointError, FileNotFoundError) as e:
            assert_clear(str(e), path.name)
            outcome = "error"
        assert kind != "pickled code" or outcome == "error"
        assert kind not in ("wrong dtypes", "wrong shapes", "truncated", "empty") or outcome == "error", path.name
        kinds[kind] += 1
        outcomes[outcome] += 1
    # the bundled demo model's own file: whole (valid), and cut where a failed download would leave it
    demo = create_model(str(DEMO_CONFIG))
    data = DEMO_WEIGHTS.read_bytes()
    for cut in (0, *sorted(int(c) for c in rng.integers(1, len(data), 3)), len(data)):
        path = tmp_path / f"tiny_fill50k_{cut}.safetensors"
        path.write_bytes(data[:cut])
        try:
            timed(lambda: load_checkpoint(demo, str(path)))
            outcome = "valid"
        except CheckpointError as e:
            assert_clear(str(e), path.name)
            outcome = "error"
        assert (outcome == "valid") == (cut == len(data))
        kinds["demo model file"] += 1
        outcomes[outcome] += 1
    assert not (tmp_path / SENTINEL).exists(), "a pickled payload ran"
    with capsys.disabled():
        report("checkpoints", kinds, outcomes)


# ------------------------------------------------------------------------------------------ data sets

@pytest.fixture(scope="module")
def fill(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fuzzdata") / "good"
    fill50k.generate(str(out), count=4, size=32, seed=0, workers=1)
    return out


def _mutations(rng):
    """(kind, function(root)) that break (or oddly but validly change) a copy of the data set."""
    def index(text: str):
        return lambda root: (root / "prompt.json").write_text(text)

    def edit_index(fn):
        def apply(root):
            lines = (root / "prompt.json").read_text().splitlines()
            (root / "prompt.json").write_text("\n".join(fn(lines)) + "\n")
        return apply

    def image(name, data_fn):
        return lambda root: (root / name).write_bytes(data_fn(root / name))

    def other_image(name, array):
        return lambda root: cv2.imwrite(str(root / name), array)

    cases = [("index", index("")), ("index", index("\n \n\t\n")), ("index", index("[1, 2, 3]\n")),
             ("index", index("null\n")), ("index", index('"a string"\n')), ("index", index("{}\n")),
             ("index", lambda root: (root / "prompt.json").write_bytes(b"\xff\xfe\x00garbage\n")),
             ("index", edit_index(lambda ls: ls + ['{"source": "source/0.png", "target": 5, "prompt": "x"}'])),
             ("index", edit_index(lambda ls: ls + ['{"source": "../../../../etc/passwd", "target": '
                                                   '"target/0.png", "prompt": "x"}'])),
             ("index", edit_index(lambda ls: ls + ['{"source": "/nonexistent/a.png", "target": "target/0.png", '
                                                   '"prompt": "x"}'])),
             ("index", edit_index(lambda ls: [json.dumps({**json.loads(ls[0]), "prompt": "p" * 1_000_000})] + ls[1:])),
             ("index", edit_index(lambda ls: [json.dumps({**json.loads(ls[0]), "extra": [1, 2]})] + ls[1:]))]
    for i in range(6):
        cut = int(rng.integers(1, 200))
        cases.append(("index", edit_index(lambda ls, cut=cut: ["".join(ls)[:cut]] + ls)))
    for i in range(4):
        pos = int(rng.integers(0, 150))
        cases.append(("index", edit_index(lambda ls, pos=pos: [ls[0][:pos] + "}{" + ls[0][pos:]] + ls[1:])))
    for i in range(4):
        name = f"{['source', 'target'][i % 2]}/{i}.png"
        cases.append(("files", lambda root, name=name: (root / name).unlink()))
        cases.append(("files", lambda root, name=name: ((root / name).unlink(), (root / name).mkdir())))
    for i in range(4):
        name = f"{['source', 'target'][i % 2]}/{i}.png"
        noise = bytes(rng.integers(0, 256, int(rng.integers(0, 600)), dtype=np.uint8))
        cases.append(("corrupt image", image(name, lambda p, noise=noise: noise)))
        cut = int(rng.integers(1, 60))
        cases.append(("corrupt image", image(name, lambda p, cut=cut: p.read_bytes()[:cut])))
    for i, (h, w) in enumerate(((40, 32), (32, 33), (1, 1), (64, 64))):
        cases.append(("size mismatch", other_image(f"target/{i}.png", np.zeros((h, w, 3), np.uint8))))
    cases += [("odd but valid", other_image("source/1.png", np.zeros((32, 32), np.uint8))),
              ("odd but valid", other_image("target/2.png", np.zeros((32, 32, 4), np.uint8))),
              ("odd but valid", other_image("target/3.png", np.zeros((32, 32, 3), np.uint16)))]
    return cases


def test_fuzz_data_sets(fill, tmp_path, capsys):
    rng = np.random.default_rng(FUZZ_SEED + 4)
    kinds, outcomes = Counter(), Counter()
    for i, (kind, mutate) in enumerate(_mutations(rng)):
        root = Path(shutil.copytree(fill, tmp_path / f"d{i}"))
        mutate(root)
        outcome = "valid"
        try:
            dataset = PromptDataset(str(root))
            for j in range(len(dataset)):
                item = timed(lambda: dataset[j])
                assert item["jpg"].shape == item["hint"].shape and item["jpg"].shape[2] == 3
                assert item["jpg"].dtype == item["hint"].dtype == np.float32 and isinstance(item["txt"], str)
        except (DatasetError, FileNotFoundError) as e:
            assert_clear(str(e), str(root))
            outcome = "error"
        kinds[kind] += 1
        outcomes[outcome] += 1
    assert outcomes["error"] >= 25 and outcomes["valid"] >= 3
    with capsys.disabled():
        report("data sets", kinds, outcomes)
