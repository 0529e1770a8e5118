"""Hostile uploads and settings, and the apps' bounds (upload size, queue, cache cleanup), through a real server."""
import contextlib
import math
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from apps_support import client_for, free_port, task_kwargs, tiny_engine
from conftest import ROOT, TINY_CLDM

from cldm.app.annotators import Annotators
from cldm.app.cli import make_parser
from cldm.app.engine import Sampling
from cldm.app.images import check_upload
from cldm.app.tasks import TASKS
from cldm.app.ui import build_demo, launch

pytest.importorskip("gradio_client")
from gradio_client import handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

CANNY = TASKS["canny"]
LIMIT = "300kb"


def png_header(width: int, height: int, pixels: bytes = b"") -> bytes:
    """A PNG whose header declares width x height RGB pixels, followed by `pixels` (compressed) only."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(pixels)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("uploads")
    (folder / "notes.png").write_text("not an image, whatever the name says\n")
    (folder / "bomb.png").write_bytes(png_header(30000, 30000))  # over PIL's decompression-bomb limit
    (folder / "huge.png").write_bytes(png_header(9000, 9000))  # 81 MP: under PIL's limit, over the app's
    (folder / "cut.png").write_bytes(png_header(64, 64, b"\0" * 40))  # the pixel data ends early
    (folder / "empty.png").write_bytes(b"")
    cv2.imwrite(str(folder / "photo.png"), np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    noise = np.random.default_rng(1).integers(0, 256, (400, 400, 3), dtype=np.uint8)
    cv2.imwrite(str(folder / "big_file.png"), noise)  # ~480 kB: over the test server's limit
    return folder


@contextlib.contextmanager
def bounded_app(**bounds):
    """The Canny app on the tiny model, served on loopback with `bounds` (launch's keyword arguments)."""
    demo = build_demo(CANNY, tiny_engine(), Annotators())
    _, url, _ = launch(demo, port=free_port(), prevent_thread_lock=True, quiet=True, **bounds)
    try:
        yield demo, url
    finally:
        demo.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with bounded_app(max_file_size=LIMIT) as (demo, url):
        yield url, client_for(url, tmp_path_factory.mktemp("downloads"))


@pytest.fixture(scope="module")
def app(served):
    return served[1]


def run(client, image, **overrides):
    return client.predict(**task_kwargs(CANNY, image, num_samples=1, **overrides), api_name="/run")


@pytest.mark.parametrize("name, message", [
    ("notes.png", "The upload 'notes.png' is not an image this app can read"),
    ("empty.png", "The upload 'empty.png' is not an image this app can read"),
    ("bomb.png", "The upload 'bomb.png' declares more pixels than this app accepts"),
    ("huge.png", r"The upload 'huge.png' is 9000x9000 \(81 MP\), more than the 50 MP"),
    ("cut.png", "The upload 'cut.png' could not be read as an image: the file is damaged, truncated"),
])
def test_bad_upload_is_a_clear_message_without_server_paths(app, files, name, message):
    with pytest.raises(AppError, match=message) as err:
        run(app, handle_file(files / name))
    assert "/tmp" not in str(err.value) and "gradio" not in str(err.value).lower()


def test_upload_over_the_size_limit_is_refused_and_the_server_keeps_serving(served, files):
    url, client = served
    big = files / "big_file.png"
    assert big.stat().st_size > 300 * 1024
    with pytest.raises(Exception, match="exceeds the maximum file size of 307200 bytes"):  # the client checks
        run(client, handle_file(big))
    # a client that does not check is stopped by the server
    response = httpx.post(url + "gradio_api/upload", files={"files": ("big.png", big.read_bytes(), "image/png")})
    assert response.status_code == 413
    small = httpx.post(url + "gradio_api/upload", files={"files": ("p.png", (files / "photo.png").read_bytes())})
    assert small.status_code == 200
    assert len(run(client, handle_file(files / "photo.png"))) == 2


@pytest.mark.parametrize("eta", [100.0, 1e6, 1.01, -0.5])
def test_eta_outside_0_to_1_is_refused_by_the_app(app, files, eta):
    with pytest.raises(AppError, match="(greater than maximum|less than minimum)"):
        run(app, handle_file(files / "photo.png"), eta=eta)


@pytest.mark.parametrize("eta", [1.5, 100.0, -1e-3, math.nan, math.inf, -math.inf])
def test_sampling_refuses_eta_outside_0_to_1(eta):
    with pytest.raises(ValueError, match=r"invalid setting: eta \(0 to 1\)"):
        Sampling(eta=eta)
    assert Sampling(eta=1.0).eta == 1.0


def test_check_upload_names_the_users_file_only(files):
    with pytest.raises(ValueError) as err:
        check_upload(files / "notes.png", "/home/me/holiday/notes.png")
    assert "'notes.png'" in str(err.value) and str(files) not in str(err.value) and "holiday" not in str(err.value)
    check_upload(files / "photo.png", "photo.png")  # a good one passes


def test_queue_cap_turns_extra_requests_away(files, tmp_path):
    with bounded_app(queue_size=1) as (demo, url):
        client = client_for(url, tmp_path)
        kwargs = task_kwargs(CANNY, handle_file(files / "photo.png"), num_samples=1, ddim_steps=20)
        jobs = [client.submit(**kwargs, api_name="/run") for _ in range(3)]
        outcomes = []
        for job in jobs:
            try:
                job.result(timeout=120)
                outcomes.append("done")
            except Exception as e:  # noqa: BLE001 - the refusal's type is gradio_client's business
                outcomes.append(str(e))
    assert "done" in outcomes
    assert any("queue is full" in o.lower() for o in outcomes), outcomes


def test_uploads_and_outputs_are_deleted_after_the_cache_ttl(files, tmp_path):
    with bounded_app(cache_ttl=2) as (demo, url):
        assert len(run(client_for(url, tmp_path), handle_file(files / "photo.png"))) == 2
        stored = [Path(f) for fs in demo.temp_file_sets for f in fs]
        assert stored and all(p.is_file() for p in stored)
        assert any(p.name == "photo.png" for p in stored)  # the upload itself
        deadline = time.monotonic() + 15
        while any(p.exists() for p in stored) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not [p for p in stored if p.exists()]


def test_cli_flags_for_bounds_and_exposure():
    parser = make_parser("x")
    args = parser.parse_args([])
    assert (args.host, args.listen, args.max_file_size, args.queue_size) == ("127.0.0.1", False, "25mb", 16)
    args = parser.parse_args(["--listen", "--max-file-size", "2 MB", "--queue-size", "3", "--cache-ttl", "60"])
    assert (args.listen, args.max_file_size, args.queue_size, args.cache_ttl) == (True, "2mb", 3, 60)
    assert parser.parse_args(["--max-file-size", "1000"]).max_file_size == 1000
    for bad in (["--max-file-size", "lots"], ["--max-file-size", "0"], ["--queue-size", "0"], ["--cache-ttl", "-1"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def test_bad_ckpt_to_an_app_is_one_line_without_traceback(tmp_path):
    empty = tmp_path / "control_empty.pth"
    empty.write_bytes(b"")
    done = subprocess.run([sys.executable, str(ROOT / "gradio_canny2image.py"), "--config", TINY_CLDM, "--ckpt",
                           str(empty), "--device", "cpu"], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert f"error: cannot read checkpoint {empty}: the file is empty (0 bytes)" in done.stderr.splitlines()[-1]
