"""Validation during training (issue 21): Fill50K IoU and colour accuracy every N steps, logged next to the loss
in the CSV log and in TensorBoard event files."""
import csv
from pathlib import Path

from conftest import TINY_CLDM, TINY_LDM, build_tiny

from cldm.model import save_state_dict
from training import fill50k
from training.control_weights import add_control_cli
from training.train import main


def test_validation_scores_logged_to_csv_and_tensorboard(tmp_path: Path):
    fill50k.generate(str(tmp_path / "fill50k"), count=4, size=64, seed=0, workers=1)
    save_state_dict(build_tiny(TINY_LDM).state_dict(), str(tmp_path / "sd.ckpt"))
    add_control_cli("", "", TINY_CLDM, [str(tmp_path / "sd.ckpt"), str(tmp_path / "ini.ckpt")])
    out = tmp_path / "run"
    main(["--config", TINY_CLDM, "--resume", str(tmp_path / "ini.ckpt"), "--data-root", str(tmp_path / "fill50k"),
          "--output-dir", str(out), "--accelerator", "cpu", "--log-every", "0", "--max-steps", "2", "--batch-size", "2",
          "--loss-every", "1", "--val-every", "2", "--val-samples", "2", "--log-ddim-steps", "2", "--logger", "both"])
    with open(out / "lightning_logs" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    val = [r for r in rows if r.get("val/iou")]
    assert [int(r["step"]) for r in val] == [2]
    assert 0.0 <= float(val[0]["val/iou"]) <= 1.0 and 0.0 <= float(val[0]["val/color_acc"]) <= 1.0
    assert any(r["train/loss_simple_step"] for r in rows)
    assert list((out / "tensorboard").glob("version_0/events.out.tfevents.*"))
