"""Validation during training (issue 21): Fill50K IoU and colour accuracy, or a cldm.evaluate controllability
score (Canny F1 here) on held-out images, every N steps, logged next to the loss in the CSV log and in TensorBoard
event files."""
import csv
import json
import shutil
from pathlib import Path

import pytest

from conftest import TINY_CLDM, training_workspace

from training.train import main


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return training_workspace(tmp_path_factory.mktemp("val"), count=4)


def _val_rows(workspace: Path, out: Path, *extra: str) -> list:
    main(["--config", TINY_CLDM, "--resume", str(workspace / "control_ini.ckpt"), "--data-root", str(workspace / "fill50k"),
          "--output-dir", str(out), "--accelerator", "cpu", "--log-every", "0", "--max-steps", "2", "--batch-size",
          "2", "--loss-every", "1", "--val-every", "2", "--val-samples", "2", "--log-ddim-steps", "2", *extra])
    with open(out / "lightning_logs" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert any(r["train/loss_simple_step"] for r in rows)
    return rows


def test_fill50k_scores_logged_to_csv_and_tensorboard(workspace, tmp_path):
    rows = _val_rows(workspace, tmp_path / "run", "--logger", "both")
    val = [r for r in rows if r.get("val/iou")]
    assert [int(r["step"]) for r in val] == [2]
    assert 0.0 <= float(val[0]["val/iou"]) <= 1.0 and 0.0 <= float(val[0]["val/color_acc"]) <= 1.0
    assert list((tmp_path / "run" / "tensorboard").glob("version_0/events.out.tfevents.*"))


def test_canny_controllability_on_held_out_images(workspace, tmp_path):
    held_out = tmp_path / "held_out"
    held_out.mkdir()
    with open(workspace / "fill50k" / "prompt.json") as f:
        for line in list(f)[:2]:
            item = json.loads(line)
            name = Path(item["target"]).stem
            shutil.copy(workspace / "fill50k" / item["target"], held_out / f"{name}.png")
            (held_out / f"{name}.txt").write_text(item["prompt"])
    rows = _val_rows(workspace, tmp_path / "run", "--val-metric", "canny", "--val-data", str(held_out))
    val = [r for r in rows if r.get("val/f1")]
    assert [int(r["step"]) for r in val] == [2] and 0.0 <= float(val[0]["val/f1"]) <= 1.0
    with pytest.raises(SystemExit, match="needs --val-data"):
        _val_rows(workspace, tmp_path / "x", "--val-metric", "canny")
