"""Fill50K generator and the data set that reads it (issue 4, 'What it must show' 4)."""
import json
import runpy
from pathlib import Path

import numpy as np
import pytest

from training import fill50k
from training.fill50k import COLORS, MIN_COLOR_DISTANCE, make_sample, outline_thickness, parse_prompt
from tutorial_dataset import MyDataset


def _tree_bytes(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def fill_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fill") / "fill50k"
    fill50k.generate(str(out), count=8, size=64, seed=0, workers=1)
    return out


def test_same_seed_same_bytes_for_any_worker_count(fill_dir, tmp_path):
    fill50k.generate(str(tmp_path / "two_workers"), count=8, size=64, seed=0, workers=2)
    assert _tree_bytes(tmp_path / "two_workers") == _tree_bytes(fill_dir)
    fill50k.generate(str(tmp_path / "seed1"), count=8, size=64, seed=1, workers=1)
    assert _tree_bytes(tmp_path / "seed1")["prompt.json"] != _tree_bytes(fill_dir)["prompt.json"]


def test_index_layout(fill_dir):
    lines = (fill_dir / "prompt.json").read_text().splitlines()
    assert len(lines) == 8
    for i, line in enumerate(lines):
        entry = json.loads(line)
        assert entry["source"] == f"source/{i}.png" and entry["target"] == f"target/{i}.png"
        assert (fill_dir / entry["source"]).is_file() and (fill_dir / entry["target"]).is_file()


def test_prompts_name_two_distinct_valid_colours():
    for i in range(200):
        prompt = make_sample(i, size=16, seed=3)[2]
        circle, background = parse_prompt(prompt)
        assert prompt == prompt.lower() and prompt.endswith(" background")
        assert np.linalg.norm(np.subtract(circle, background)) >= MIN_COLOR_DISTANCE


def test_colour_table():
    assert len(COLORS) == 141  # the 148 CSS names less the 7 'grey' spellings
    assert all(name == name.lower() and "grey" not in name for name in COLORS)
    assert COLORS["medium sea green"] == (60, 179, 113)
    assert parse_prompt("MediumSeaGreen circle with lightgrey background") == ((60, 179, 113), (211, 211, 211))
    for bad in ("a red square", "blurple circle with red background"):
        with pytest.raises(ValueError):
            parse_prompt(bad)


@pytest.mark.parametrize("size", [64, 512])
def test_filled_circle_matches_outline(size):
    assert outline_thickness(512) == 3 and outline_thickness(64) == 1
    for index in range(4):
        source, target, prompt, c = make_sample(index, size=size, seed=0)
        assert source.shape == target.shape == (size, size, 3) and source.dtype == np.uint8
        ys, xs = np.mgrid[:size, :size]
        dist = np.hypot(xs - c.x, ys - c.y)
        outline = source.max(axis=2) > 127
        assert outline.any(), "the circle must show in the image"
        near = c.thickness / 2 + 1.5  # half the line, its anti-aliased edge, the polygon approximation
        assert np.all(np.abs(dist[outline] - c.radius) <= near)
        assert abs(dist[outline].mean() - c.radius) < 0.5
        inside, outside = dist < c.radius - 1.5, dist > c.radius + 1.5
        circle_rgb, background_rgb = parse_prompt(prompt)
        assert np.all(target[inside] == circle_rgb) and np.all(target[outside] == background_rgb)
        assert np.all(source[np.abs(dist - c.radius) > near + 1.0] == 0)


def test_dataset_items(fill_dir):
    dataset = MyDataset(str(fill_dir))
    assert len(dataset) == 8
    item = dataset[3]
    assert item["jpg"].shape == item["hint"].shape == (64, 64, 3)
    assert item["jpg"].dtype == item["hint"].dtype == np.float32
    assert item["jpg"].min() >= -1.0 and item["jpg"].max() <= 1.0 and item["jpg"].min() < 0.0
    assert item["hint"].min() == 0.0 and 0.9 < item["hint"].max() <= 1.0
    # the dataset is RGB: the target's circle colour is the prompt's, not its BGR reverse
    circle_rgb, _ = parse_prompt(item["txt"])
    c = make_sample(3, size=64, seed=0)[3]
    assert np.allclose((item["jpg"][c.y, c.x] + 1.0) * 127.5, circle_rgb)
    assert MyDataset(str(fill_dir), prompt_dropout=1.0)[0]["txt"] == ""
    with pytest.raises(FileNotFoundError, match="training.fill50k"):
        MyDataset(str(fill_dir / "missing"))


def test_tutorial_dataset_test_script(fill_dir, tmp_path, monkeypatch, capsys):
    (tmp_path / "training").mkdir()
    (tmp_path / "training" / "fill50k").symlink_to(fill_dir)
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(Path(__file__).parents[1] / "tutorial_dataset_test.py"), run_name="__main__")
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "8" and out[2:] == ["(64, 64, 3)", "(64, 64, 3)"]
