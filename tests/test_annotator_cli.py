"""`python -m annotator`: folders with bad files, single files, weight errors, the module entry point."""
import logging
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from annotator.__main__ import ANNOTATORS, main, read_rgb
from tests.annotator_weights import random_ckpt_dir

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def inputs(tmp_path):
    """A folder of 40x60 images in several formats plus files that are not images."""
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    cv2.imwrite(str(folder / "colour.png"), rgb)
    cv2.imwrite(str(folder / "grey.png"), rgb[:, :, 0])
    cv2.imwrite(str(folder / "alpha.png"), np.dstack([rgb, np.full((40, 60), 255, np.uint8)]))
    cv2.imwrite(str(folder / "deep.png"), rgb.astype(np.uint16) * 257)
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    (folder / "empty.jpg").write_bytes(b"")
    return folder


def test_read_rgb_formats(inputs):
    colour = read_rgb(inputs / "colour.png")
    assert colour.shape == (40, 60, 3) and colour.dtype == np.uint8
    assert (read_rgb(inputs / "deep.png") == colour).all()  # 16-bit: top byte
    assert (read_rgb(inputs / "alpha.png") == colour).all()  # alpha dropped, as the apps do
    assert (read_rgb(inputs / "grey.png") == colour[:, :, 2:3]).all()  # the grey file holds the stored blue plane
    with pytest.raises(ValueError, match="not a readable image"):
        read_rgb(inputs / "notes.txt")


def test_folder_keeps_going_and_reports_what_it_skipped(inputs, tmp_path, capsys, caplog):
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="annotator"):
        assert main(["canny", str(inputs), str(out), "--resolution", "64"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["alpha.png", "colour.png", "deep.png", "grey.png"]
    edge = cv2.imread(str(out / "colour.png"), cv2.IMREAD_UNCHANGED)
    assert edge.shape == (64, 128) and set(np.unique(edge)) <= {0, 255}  # 40x60 -> short side 64
    stderr = capsys.readouterr().err
    for name in ("notes.txt", "broken.png", "empty.jpg"):
        assert f"skipped {inputs / name}" in stderr
    assert "annotated 4 of 7" in caplog.text
    assert "skipped 3: broken.png (not a readable image); empty.jpg" in caplog.text


def test_single_file_scribble(inputs, tmp_path):
    assert main(["scribble", str(inputs / "colour.png"), str(tmp_path / "out"), "--resolution", "64"]) == 0
    assert set(np.unique(cv2.imread(str(tmp_path / "out" / "colour.png"), cv2.IMREAD_UNCHANGED))) <= {0, 255}


def test_net_annotator_with_random_weights(inputs, tmp_path):
    ckpts = random_ckpt_dir("mlsd_large_512_fp32.pth")
    assert main(["mlsd", str(inputs / "colour.png"), str(tmp_path / "out"), "--resolution", "64",
                 "--ckpt-dir", str(ckpts), "--thr-v", "0", "--thr-d", "0"]) == 0
    assert cv2.imread(str(tmp_path / "out" / "colour.png")).shape[:2] == (64, 128)  # 96/64 = 1.5 rounds to 2


def test_missing_weights_stop_the_run_with_the_url(inputs, tmp_path, caplog):
    assert main(["hed", str(inputs), str(tmp_path / "out"), "--ckpt-dir", str(tmp_path / "none")]) == 2
    assert "ControlNetHED.pth" in caplog.text and "huggingface.co/lllyasviel/Annotators" in caplog.text
    assert not (tmp_path / "out").exists()


def test_nothing_annotated_or_no_input_is_exit_1(inputs, tmp_path):
    assert main(["canny", str(inputs / "notes.txt"), str(tmp_path / "out")]) == 1
    assert main(["canny", str(tmp_path / "missing"), str(tmp_path / "out")]) == 1


def test_every_annotator_name_parses():
    for name in ANNOTATORS:
        with pytest.raises(SystemExit) as exit_info:
            main([name, "x", "y", "--help"])
        assert exit_info.value.code == 0


def test_module_entry_point(inputs, tmp_path):
    result = subprocess.run([sys.executable, "-m", "annotator", "canny", str(inputs / "colour.png"),
                             str(tmp_path / "out"), "--resolution", "64"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "colour.png").is_file()


# ------------------------------------------------------------------------- batches: resumable, several

def test_a_second_run_skips_done_maps_and_overwrite_redoes_them(inputs, tmp_path, caplog):
    out = tmp_path / "out"
    assert main(["canny", str(inputs), str(out), "--resolution", "64"]) == 0
    (out / "colour.png").write_bytes(b"marker")  # a done map is never touched again...
    (out / "grey.png").unlink()  # ...and a missing one is made
    with caplog.at_level(logging.INFO, logger="annotator"):
        assert main(["canny", str(inputs), str(out), "--resolution", "64"]) == 0
    assert "annotated 1 of 7 file(s)" in caplog.text and "(3 already done)" in caplog.text
    assert (out / "colour.png").read_bytes() == b"marker" and (out / "grey.png").is_file()
    assert main(["canny", str(inputs), str(out), "--resolution", "64", "--overwrite"]) == 0
    assert cv2.imread(str(out / "colour.png")) is not None
    assert not list(out.glob(".*"))  # no temporary files left behind


def test_several_annotators_write_one_folder_each(inputs, tmp_path):
    ckpts = random_ckpt_dir("table5_pidinet.pth")
    out = tmp_path / "out"
    assert main(["canny,pidinet_safe,shuffle,ip2p", str(inputs / "colour.png"), str(out), "--resolution", "64",
                 "--ckpt-dir", str(ckpts)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["canny", "ip2p", "pidinet_safe", "shuffle"]
    safe = cv2.imread(str(out / "pidinet_safe" / "colour.png"), cv2.IMREAD_UNCHANGED)
    assert safe.shape == (64, 128) and set(np.unique(safe)) <= {0, 127, 255}
    shuffled = cv2.imread(str(out / "shuffle" / "colour.png"))
    assert shuffled.shape == (64, 128, 3)


def test_a_missing_weight_file_stops_only_its_annotator(inputs, tmp_path, caplog):
    out = tmp_path / "out"
    assert main(["lineart,canny", str(inputs / "colour.png"), str(out), "--resolution", "64",
                 "--ckpt-dir", str(tmp_path / "none")]) == 2
    assert "lineart: missing annotator weights sk_model.pth" in caplog.text
    assert (out / "canny" / "colour.png").is_file() and not (out / "lineart").exists()


def test_all_names_every_annotator_and_unknown_names_are_refused(capsys):
    from annotator.__main__ import annotator_names
    assert annotator_names("all") == list(ANNOTATORS)
    assert {"lineart", "lineart_anime", "pidinet", "scribble_pidinet", "openpose_v11", "openpose_full", "normalbae",
            "shuffle", "tile_resample", "ip2p"} <= set(ANNOTATORS)
    with pytest.raises(SystemExit):
        main(["canny,nope", "x", "y"])
    assert "unknown annotator nope" in capsys.readouterr().err


def test_a_map_never_replaces_its_input(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), np.full((40, 60, 3), 90, np.uint8))
    before = (folder / "a.png").read_bytes()
    assert main(["canny", str(folder), str(folder), "--resolution", "64"]) == 1
    assert (folder / "a.png").read_bytes() == before
