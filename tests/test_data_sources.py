"""Training data sources (issue 21): a folder of files, JSONL/CSV indexes, tar shards, conditions computed by an
annotator, bad data named or skipped and counted, aspect-ratio buckets, crop and flip of image and condition
together; a few training steps on shards with buckets."""
import io
import json
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import TINY_CLDM, TINY_LDM, build_tiny

from annotator.canny import CannyDetector
from cldm.model import save_state_dict
from training.control_weights import add_control_cli
from training.data.buckets import crop_box, fit, make_buckets, nearest_bucket
from training.data.conditions import Annotate
from training.data.folder import list_folder
from training.data.index import list_index
from training.data.samples import RecordDataset
from training.data.shards import list_shards, shard_paths
from training.dataset import DatasetError
from training.resume import ResumableBatchSampler
from training.train import main

SIZES = [(64, 64), (128, 64), (64, 128), (96, 96), (128, 64), (64, 128)]  # (width, height)


def _image(width: int, height: int, seed: int) -> np.ndarray:
    """An RGB image whose left and right halves differ (so a flip shows), with edges for Canny."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.uint8)
    image[:, : width // 2] = rng.integers(0, 255, 3)
    image[:, width // 2:] = rng.integers(0, 255, 3)
    cv2.circle(image, (width // 3, height // 2), min(width, height) // 5, (255, 255, 255), -1)
    return image


def _png(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def folder(tmp_path) -> Path:
    """Images + captions beside them + conditions/ (each condition: the image's red channel, grey)."""
    root = tmp_path / "folder"
    for i, (w, h) in enumerate(SIZES):
        image = _image(w, h, i)
        _write(root / f"{i:03d}.png", _png(image))
        _write(root / f"{i:03d}.txt", f"caption {i}\n".encode())
        _write(root / "conditions" / f"{i:03d}.png", _png(np.repeat(image[..., :1], 3, axis=2)))
    return root


def _tar(path: Path, files: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def shards(tmp_path) -> Path:
    """Two WebDataset-layout shards without stored conditions."""
    root = tmp_path / "shards"
    for s in range(2):
        files = {}
        for i in range(s * 3, s * 3 + 3):
            files[f"{i:06d}.png"] = _png(_image(*SIZES[i], i))
            files[f"{i:06d}.txt"] = f"shard caption {i}".encode()
        _tar(root / f"train-{s:03d}.tar", files)
    return root


def test_folder_items_and_conditions(folder):
    dataset = RecordDataset(list_folder(str(folder)))
    assert len(dataset) == 6
    item = dataset[1]
    assert item["txt"] == "caption 1" and item["jpg"].shape == (64, 128, 3) and item["hint"].shape == (64, 128, 3)
    image = _image(128, 64, 1)
    assert np.array_equal(np.round((item["jpg"] + 1) * 127.5).astype(np.uint8), image)
    assert np.array_equal(item["hint"][..., 1], image[..., 0] / np.float32(255))


def test_folder_missing_caption_named_or_skipped(folder):
    (folder / "002.txt").unlink()
    with pytest.raises(DatasetError, match=r"002\.png: no caption .*002\.txt"):
        list_folder(str(folder))
    listing = list_folder(str(folder), skip_bad=True)
    assert len(listing.records) == 5 and len(listing.skipped) == 1


def test_jsonl_and_csv_indexes(folder):
    rows = [{"image": f"{i:03d}.png", "conditioning_image": f"conditions/{i:03d}.png", "text": f"t{i}"}
            for i in range(3)]
    (folder / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (folder / "train.csv").write_text("image,condition,caption\n" + "".join(
        f"{i:03d}.png,conditions/{i:03d}.png,\"c, {i}\"\n" for i in range(3)))
    jsonl, csv_ = list_index(str(folder / "train.jsonl")), list_index(str(folder / "train.csv"))
    assert [r.caption for r in jsonl.records] == ["t0", "t1", "t2"]
    assert [r.caption for r in csv_.records] == ["c, 0", "c, 1", "c, 2"]
    assert jsonl.records[1].condition.path == str(folder / "conditions" / "001.png")
    with open(folder / "train.jsonl", "a") as f:
        f.write('{"image": "nowhere.png", "text": "x"}\n{not json\n')
    with pytest.raises(DatasetError, match=r"2 bad entries: .*train\.jsonl, line 4: image not found: .*nowhere\.png"
                                           r".*line 5: not valid JSON"):
        list_index(str(folder / "train.jsonl"))
    skipped = list_index(str(folder / "train.jsonl"), skip_bad=True)
    assert len(skipped.records) == 3 and len(skipped.skipped) == 2


def test_shards_with_canny_computed_on_the_fly(shards):
    assert [Path(p).name for p in shard_paths(str(shards / "train-{000..001}.tar"))] == ["train-000.tar",
                                                                                       "train-001.tar"]
    listing = list_shards(str(shards))
    assert len(listing.records) == 6 and listing.records[4].caption == "shard caption 4"
    with pytest.raises(DatasetError, match="no stored condition .*--condition"):
        RecordDataset(listing)
    dataset = RecordDataset(listing, annotate=Annotate("canny"))
    item = dataset[2]
    edges = CannyDetector()(_image(*SIZES[2], 2))
    assert item["hint"].shape == (128, 64, 3) and edges.any()
    assert np.array_equal(item["hint"][..., 0], edges / np.float32(255))


def test_bad_shards_named_or_skipped(shards):
    _tar(shards / "train-002.tar", {})
    _tar(shards / "train-003.tar", {"000009.png": _png(_image(64, 64, 9))})  # no caption
    with pytest.raises(DatasetError, match=r"train-002\.tar: empty shard"):
        list_shards(str(shards))
    listing = list_shards(str(shards), skip_bad=True)
    assert len(listing.records) == 6 and len(listing.skipped) == 2
    assert "000009: no caption" in listing.skipped[1]


def test_corrupt_image_named_or_replaced(folder):
    (folder / "003.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"cannot decode image .*003\.png"):
        RecordDataset(list_folder(str(folder)))[3]
    dataset = RecordDataset(list_folder(str(folder)), resolution=64, skip_bad=True)
    item = dataset[3]  # replaced by the next good sample (same bucket)
    assert item["txt"] == "caption 4" and dataset.skipped_reading == 1
    (folder / "conditions" / "004.png").write_bytes(_png(np.zeros((10, 10, 3), np.uint8)))
    with pytest.raises(DatasetError, match=r"004\.png is 128x64 but its condition .*conditions/004\.png is 10x10"):
        RecordDataset(list_folder(str(folder)))[4]


def test_buckets_crop_and_flip(folder):
    buckets = make_buckets(128)
    assert buckets == [(64, 128), (128, 64), (128, 128)] and all(w % 64 == 0 and h % 64 == 0 for w, h in buckets)
    assert nearest_bucket(300, 140, buckets) == (128, 64) and nearest_bucket(90, 100, buckets) == (128, 128)
    scale, box = crop_box(200, 100, (128, 128), random_crop=False)
    assert fit(np.zeros((100, 200, 3), np.uint8), (128, 128), scale, box).shape == (128, 128, 3)

    dataset = RecordDataset(list_folder(str(folder)), resolution=128, buckets=True, flip=True, random_crop=True)
    assert dataset.bucket_counts() == {(128, 128): 2, (128, 64): 2, (64, 128): 2}
    sampler = ResumableBatchSampler(len(dataset), 2, groups=dataset.groups())
    for batch in sampler.plan(0):
        shapes = {dataset[i]["jpg"].shape for i in batch}
        assert len(shapes) == 1
    flips = 0
    for seed in range(8):  # the condition is the image's red channel: it must follow every flip and crop
        torch.manual_seed(seed)
        item = dataset[1]
        red = np.round((item["jpg"][..., 0] + 1) * 127.5)
        assert np.abs(red - item["hint"][..., 0] * 255).max() <= 1
        unflipped = _image(128, 64, 1)
        flips += int(np.round((item["jpg"][32, 0] + 1) * 127.5).tolist() == unflipped[32, -1].tolist())
    assert 0 < flips < 8  # some flipped, some not


@pytest.mark.slow
def test_training_steps_on_shards_with_buckets(shards, tmp_path):
    save_state_dict(build_tiny(TINY_LDM).state_dict(), str(tmp_path / "sd.ckpt"))
    add_control_cli("", "", TINY_CLDM, [str(tmp_path / "sd.ckpt"), str(tmp_path / "ini.ckpt")])
    out = tmp_path / "run"
    trainer = main(["--config", TINY_CLDM, "--resume", str(tmp_path / "ini.ckpt"), "--data-root", str(shards),
                    "--output-dir", str(out), "--accelerator", "cpu", "--log-every", "0", "--max-steps", "3",
                    "--batch-size", "2", "--resolution", "128", "--buckets", "--flip", "--condition", "canny"])
    assert trainer.global_step == 3
    assert torch.load(out / "checkpoints" / "last.ckpt")["global_step"] == 3


def test_augmentation_is_the_same_in_worker_processes(folder):
    """Crops, flips and prompt dropout are drawn from (seed, epoch, index): the same batches come out of the
    main process and of 2 worker processes, in both epochs (what exact resume relies on)."""
    from torch.utils.data import DataLoader

    from training.resume import SeededItems

    dataset = RecordDataset(list_folder(str(folder)), resolution=128, buckets=True, random_crop=True, flip=True,
                            prompt_dropout=0.5)

    def batches(workers: int) -> list:
        sampler = ResumableBatchSampler(len(dataset), 2, seed=7, groups=dataset.groups())
        loader = DataLoader(SeededItems(dataset, sampler, 7), batch_sampler=sampler, num_workers=workers)
        out = []
        for epoch in (0, 1):
            sampler.go_to(epoch)
            out += [(b["txt"], b["jpg"], b["hint"]) for b in loader]
        return out

    main_process, workers = batches(0), batches(2)
    assert len(main_process) == len(workers) == 6
    for (t0, j0, h0), (t1, j1, h1) in zip(main_process, workers):
        assert t0 == t1 and torch.equal(j0, j1) and torch.equal(h0, h1)
    assert {t for texts, _, _ in main_process for t in texts} & {""}  # some prompts dropped
