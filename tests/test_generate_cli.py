"""python -m cldm.generate: batches over a folder or a CSV / JSON-lines file, resumable, on the tiny model."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cldm.generate_cli import main, rows_from_table

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not (ROOT / "models" / "tiny_fill50k.safetensors").is_file(),
                                reason="tiny model absent")
FAST = ["--steps", "2", "--width", "64", "--height", "64"]


@pytest.fixture(scope="module")
def maps(tmp_path_factory):
    from training.eval_fill import heldout

    folder = tmp_path_factory.mktemp("maps")
    data = heldout(2, 64)
    for i, hint in enumerate(data.hints):
        Image.fromarray((hint.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(folder / f"m{i}.png")
    (folder / "m0.txt").write_text(data.prompts[0])
    return folder, data.prompts


def test_folder_batch_resumes_and_repeats(maps, tmp_path, capsys):
    folder, prompts = maps
    out = tmp_path / "out"
    assert main([str(folder), "--out", str(out), "--prompt", prompts[1], "--seed", "10", *FAST]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["00000_m0_0.png", "00001_m1_0.png"]
    with Image.open(out / "00001_m1_0.png") as im:
        params = json.loads(im.text["parameters"])
        first = np.asarray(im.convert("RGB"))
    assert params["prompt"] == prompts[1] and params["seed"] == 11 and params["steps"] == 2
    assert json.loads(Image.open(out / "00000_m0_0.png").text["parameters"])["prompt"] == prompts[0]  # sidecar

    stamp = (out / "00000_m0_0.png").stat().st_mtime_ns
    (out / "00001_m1_0.png").unlink()  # as if the run had been stopped there
    capsys.readouterr()
    assert main([str(folder), "--out", str(out), "--prompt", prompts[1], "--seed", "10", *FAST]) == 0
    assert "2 rows, 1 already done" in capsys.readouterr().err
    assert (out / "00000_m0_0.png").stat().st_mtime_ns == stamp  # kept, not redone
    assert np.array_equal(np.asarray(Image.open(out / "00001_m1_0.png").convert("RGB")), first)  # same seed
    assert not list(out.glob(".*.tmp"))

    assert main([str(folder), "--out", str(tmp_path / "x"), *FAST]) == 2
    assert "no prompt for" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main([str(folder), "--out", str(folder), "--prompt", "a", *FAST]) == 2
    assert "must not be the input folder" in capsys.readouterr().err


def test_jsonl_rows_with_img2img_and_inpainting(maps, tmp_path, capsys):
    folder, prompts = maps
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(tmp_path / "init.png")
    mask = np.zeros((64, 64), np.uint8)
    mask[:, 32:] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    table = tmp_path / "rows.jsonl"
    table.write_text("\n".join(json.dumps(r) for r in [
        {"source": str(folder / "m0.png"), "prompt": prompts[0], "seed": 5},
        {"image": str(folder / "m1.png"), "prompt": prompts[1], "init_image": "init.png", "mask": "mask.png"},
    ]) + "\n")
    out = tmp_path / "out"
    assert main([str(table), "--out", str(out), "--num-images", "2", "--mask-blur", "1", *FAST]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["00000_m0_0.png", "00000_m0_1.png",
                                                     "00001_m1_0.png", "00001_m1_1.png"]
    painted = np.asarray(Image.open(out / "00001_m1_0.png").convert("RGB")).astype(int)
    assert (painted[:, :24] == 90).all()  # unmasked pixels are the init image's
    assert json.loads(Image.open(out / "00000_m0_1.png").text["parameters"])["seed"] == 5

    bad = tmp_path / "bad.csv"
    bad.write_text("image,prompt,seed\nm0.png,a,1\nm1.png,b,x\n")
    with pytest.raises(ValueError, match=r"bad.csv, line 3: seed 'x' is not an integer"):
        rows_from_table(bad)
    missing = tmp_path / "missing.jsonl"
    missing.write_text(json.dumps({"image": "nope.png", "prompt": "a"}) + "\n")
    assert main([str(missing), "--out", str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert "missing, e.g." in err and "nope.png" in err


def test_module_entry_point():
    done = subprocess.run([sys.executable, "-m", "cldm.generate", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "--sampler" in done.stdout and "dpmpp_2m_karras" in done.stdout
