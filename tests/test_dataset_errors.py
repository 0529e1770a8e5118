"""A broken training data set fails up front (or at the bad item) with the file, and the line, to fix."""
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from training import fill50k
from training.dataset import DatasetError, PromptDataset
from training.train import build_dataloader, build_parser


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "fill50k"
    fill50k.generate(str(out), count=4, size=32, seed=0, workers=1)
    return out


@pytest.fixture
def data(good, tmp_path) -> Path:
    """A fresh copy of the good data set, to break."""
    return Path(shutil.copytree(good, tmp_path / "fill50k"))


def write_index(root: Path, text: str) -> None:
    (root / "prompt.json").write_text(text)


def test_good_data_set_reads(good):
    assert len(PromptDataset(str(good))) == 4


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_empty_index_is_refused(data, text):
    write_index(data, text)
    with pytest.raises(DatasetError, match=r"prompt\.json lists no samples"):
        PromptDataset(str(data))


def test_malformed_line_names_file_and_line(data):
    lines = (data / "prompt.json").read_text().splitlines()
    lines[2] = lines[2][:-5]  # cut: no closing brace
    write_index(data, "\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"fill50k/prompt\.json, line 3: not valid JSON"):
        PromptDataset(str(data))


@pytest.mark.parametrize("line", ['["source/0.png", "target/0.png", "x"]', '{"source": "source/0.png"}',
                                  '{"source": 1, "target": "target/0.png", "prompt": "x"}'])
def test_wrong_fields_name_the_line(data, line):
    write_index(data, (data / "prompt.json").read_text() + line + "\n")
    with pytest.raises(DatasetError, match=r"prompt\.json, line 5: expected an object with the text fields"):
        PromptDataset(str(data))


def test_missing_images_are_listed_up_front(data):
    (data / "target" / "1.png").unlink()
    (data / "source" / "3.png").unlink()
    with pytest.raises(DatasetError, match=r"2 of the 8 images it lists are missing: line 2: .*target/1\.png; "
                                           r"line 4: .*source/3\.png"):
        PromptDataset(str(data))


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n" + b"\0" * 20, b"not an image at all"])
def test_corrupt_image_is_named_as_corrupt(data, content):
    (data / "target" / "2.png").write_bytes(content)
    dataset = PromptDataset(str(data))
    dataset[1]
    with pytest.raises(DatasetError, match=r"cannot decode image .*target/2\.png: the file is corrupt"):
        dataset[2]


def test_size_mismatch_names_both_files(data):
    cv2.imwrite(str(data / "target" / "0.png"), np.zeros((40, 32, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"target/0\.png is 32x40 but its condition .*source/0\.png is 32x32"):
        PromptDataset(str(data))[0]


def test_training_refuses_a_broken_data_set_in_one_line(data):
    write_index(data, json.dumps({"source": "source/0.png"}) + "\n")
    args = build_parser().parse_args(["--data-root", str(data)])
    with pytest.raises(SystemExit, match=r"^error: .*prompt\.json, line 1"):
        build_dataloader(args)
