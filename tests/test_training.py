"""tutorial_train end to end on the tiny config (issue 4, 'What it must show' 1 and 2).

tiny SD checkpoint -> tool_add_control -> a few steps on a generated 64 px Fill50K -> checkpoints, image grids and a
finite loss; a crashed run resumes from its last step with its optimizer state; DDP with 2 CPU processes.
"""
import csv
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY_CLDM, build_tiny, training_workspace

from cldm.model import load_state_dict
from ldm.models.diffusion.ddpm import fused_adamw_runs
from training.train import RankSummary, build_model, build_parser, main

LOG_NAMES = ("reconstruction", "control", "conditioning", "samples_cfg_scale_9.00")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """12 Fill50K images of 64 px and control_ini.ckpt made by tool_add_control from a tiny random SD."""
    return training_workspace(tmp_path_factory.mktemp("train"), count=12)


def _argv(workspace: Path, output_dir: Path, *extra: str) -> list:
    return ["--config", TINY_CLDM, "--resume", str(workspace / "control_ini.ckpt"), "--data-root",
            str(workspace / "fill50k"), "--output-dir", str(output_dir), "--accelerator", "cpu",
            "--log-ddim-steps", "2", "--loss-every", "1", *extra]


def _saved_step(output_dir: Path) -> int:
    return torch.load(output_dir / "checkpoints" / "last.ckpt")["global_step"]


def _adam_steps(output_dir: Path) -> set:
    state = torch.load(output_dir / "checkpoints" / "last.ckpt")["optimizer_states"][0]["state"]
    return {int(s["step"]) for s in state.values()}


@pytest.mark.slow
def test_train_crash_and_resume(workspace, tmp_path, monkeypatch):
    """Train, crash at step 3 (the exception checkpoint keeps step 3 and its optimizer state), resume to step 5."""
    out = tmp_path / "run"

    def crash(self, trainer, *args):
        if trainer.global_step == 3:
            raise RuntimeError("simulated crash")

    with monkeypatch.context() as patch:
        patch.setattr(RankSummary, "on_train_batch_end", crash)
        with pytest.raises(RuntimeError, match="simulated crash"):
            main(_argv(workspace, out, "--max-steps", "5", "--ckpt-every", "2", "--log-every", "2"))
    assert _saved_step(out) == 3 and _adam_steps(out) == {3}
    assert set(load_state_dict(str(out / "checkpoints" / "last.ckpt"))) == set(build_tiny().state_dict())
    logged = sorted(p.name for p in (out / "image_log" / "train").iterdir())
    expected = [f"{name}_gs-{gs:06}_e-000000_b-{b:06}.png" for name in LOG_NAMES for gs, b in ((1, 0), (3, 2))]
    assert logged == sorted(expected)

    trainer = main(_argv(workspace, out, "--max-steps", "5", "--ckpt-every", "2", "--log-every", "0",
                         "--resume-training"))
    assert trainer.global_step == 5
    assert os.readlink(out / "checkpoints" / "last.ckpt") == "step=5.ckpt"  # the final step is saved too
    assert _saved_step(out) == 5 and _adam_steps(out) == {5}  # a fresh optimizer would count 2
    losses = {}  # CSV log version -> {step: loss}; the crashed run's rows end before its failing step
    for version in ("version_0", "version_1"):
        with open(out / "lightning_logs" / version / "metrics.csv") as f:
            losses[version] = {int(row["step"]): float(row["train/loss_simple_step"])
                               for row in csv.DictReader(f) if row["train/loss_simple_step"]}
    assert list(losses["version_0"])[:2] == [0, 1] and list(losses["version_1"]) == [3, 4]
    assert all(math.isfinite(v) for run in losses.values() for v in run.values())


def test_refusals(workspace, tmp_path):
    with pytest.raises(SystemExit, match="(?s)initial weights not found: .*nowhere.ckpt.*tool_add_control.py"):
        main(_argv(workspace, tmp_path / "a", "--resume", str(tmp_path / "nowhere.ckpt")))
    with pytest.raises(SystemExit, match="no checkpoint to resume"):
        main(_argv(workspace, tmp_path / "b", "--resume-training"))
    (tmp_path / "c" / "checkpoints").mkdir(parents=True)
    (tmp_path / "c" / "checkpoints" / "last.ckpt").touch()
    with pytest.raises(SystemExit, match="already holds a run"):
        main(_argv(workspace, tmp_path / "c"))
    with pytest.raises(SystemExit, match="needs a GPU"):
        main(_argv(workspace, tmp_path / "d", "--precision", "16"))


def test_model_options(workspace, tmp_path):
    args = build_parser().parse_args(_argv(workspace, tmp_path, "--sd-unlocked", "--only-mid-control", "--lr", "3e-4",
                                           "--no-grad-checkpointing"))
    model = build_model(args)
    assert not model.sd_locked and model.only_mid_control and model.learning_rate == 3e-4
    assert not any(getattr(m, "use_checkpoint", False) for m in model.modules())
    trained = {id(p) for p in model.configure_optimizers().param_groups[0]["params"]}
    assert trained == {id(p) for p in model.parameters() if p.requires_grad}
    assert any(id(p) in trained for p in model.model.diffusion_model.output_blocks.parameters())


def test_fused_adamw_takes_the_same_step_as_adamw(workspace, tmp_path):
    """configure_optimizers takes torch's fused AdamW on the CPU; its update is AdamW's to float32 rounding."""
    model = build_model(build_parser().parse_args(_argv(workspace, tmp_path)))
    fused = model.configure_optimizers()
    assert fused.defaults["fused"]
    params = fused.param_groups[0]["params"]
    reference = [p.detach().clone().requires_grad_() for p in params]
    start = [p.detach().clone() for p in params]
    plain = torch.optim.AdamW(reference, lr=model.learning_rate, foreach=False)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        for p, q in zip(params, reference):
            p.grad = torch.randn(p.shape, generator=generator)
            q.grad = p.grad.clone()
        fused.step()
        plain.step()
    moved = max((p - q).abs().max().item() for p, q in zip(params, reference))
    assert moved < 1e-6
    assert min((p - s).abs().max().item() for p, s in zip(params, start)) > 1e-6  # every parameter moved
    assert not fused_adamw_runs([torch.zeros(2, dtype=torch.int64)]) and not fused_adamw_runs([])


@pytest.mark.slow
def test_ddp_two_cpu_processes(workspace, tmp_path):
    """tutorial_train_dist.py as a subprocess: strategy='ddp' re-runs sys.argv, which must not be pytest."""
    out = tmp_path / "dist"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    command = [sys.executable, str(ROOT / "tutorial_train_dist.py"),
               *_argv(workspace, out, "--max-steps", "2", "--batch-size", "2", "--log-every", "0")]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group: rank 1 is killed with it
    try:
        output, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, output[-3000:]
    for rank in (0, 1):
        assert f"rank {rank}/2: trained 2 batches, global step 2" in output
    assert _saved_step(out) == 2


def test_keep_checkpoints_keeps_every_step(workspace, tmp_path):
    out = tmp_path / "keep"
    main(_argv(workspace, out, "--max-steps", "4", "--ckpt-every", "2", "--log-every", "0", "--keep-checkpoints"))
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["last.ckpt", "step=2.ckpt", "step=4.ckpt"]
    assert _saved_step(out) == 4
