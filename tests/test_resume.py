"""Exact resume (issue 21): a tiny run killed for real with SIGKILL at a random step and resumed ends with the
same weights, optimizer state and EMA as an uninterrupted run; a kill while a checkpoint is written leaves the
previous one loadable."""
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY_CLDM, training_workspace

from training.resume import (AtomicCheckpointIO, ResumableBatchSampler, derive_seed, find_resume_checkpoint,
                             is_complete_checkpoint)
from training.train import build_parser, check_args, main

STEPS = 6  # 8 images in batches of 2: 4 batches per epoch, so the run crosses an epoch boundary


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return training_workspace(tmp_path_factory.mktemp("resume"), count=8)


def _argv(workspace: Path, out: Path, *extra: str) -> list:
    # Everything that draws random numbers is on: prompt dropout, the EMA of a trained UNet decoder, a warm-up.
    return ["--config", TINY_CLDM, "--resume", str(workspace / "control_ini.ckpt"), "--data-root",
            str(workspace / "fill50k"), "--output-dir", str(out), "--accelerator", "cpu", "--log-every", "0",
            "--max-steps", str(STEPS), "--batch-size", "2", "--ckpt-every", "1", "--deterministic", "--seed", "3",
            "--ema", "--sd-unlocked", "--prompt-dropout", "0.5", "--lr-warmup", "3", "--lr", "1e-3", *extra]


def _newest_step(folder: Path) -> int:
    steps = [int(p.name[5:-5]) for p in folder.glob("step=*.ckpt")] if folder.is_dir() else []
    return max(steps, default=-1)


def _final(out: Path) -> dict:
    return torch.load(out / "checkpoints" / "last.ckpt")


@pytest.mark.slow
def test_sigkill_at_random_step_then_resume_is_bit_identical(workspace, tmp_path):
    kill_after = random.Random().randint(1, STEPS - 2)  # printed on failure
    main(_argv(workspace, tmp_path / "whole"))

    out = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, str(ROOT / "tutorial_train.py"), *_argv(workspace, out)], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while _newest_step(out / "checkpoints") < kill_after and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before step {kill_after}: {proc.stderr.read()[-2000:]}"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_at = _newest_step(out / "checkpoints")
    assert killed_at < STEPS, f"killed after step {kill_after}, but the run had finished"

    trainer = main(_argv(workspace, out, "--resume-if-possible"))  # as a requeued job would
    assert trainer.global_step == STEPS
    whole, resumed = _final(tmp_path / "whole"), _final(out)
    assert resumed["global_step"] == STEPS
    # The EMA: complete in the final file (one update per step), started from the loaded weights (a frozen UNet
    # encoder weight keeps its loaded value; LitEma alone would have copied the random initialisation).
    assert int(whole["state_dict"]["model_ema.num_updates"]) == STEPS
    start = torch.load(workspace / "control_ini.ckpt")
    start = start.get("state_dict", start)
    assert torch.equal(whole["state_dict"]["model_ema.diffusion_modelinput_blocks00weight"],
                       start["model.diffusion_model.input_blocks.0.0.weight"])
    differ = [k for k, v in whole["state_dict"].items() if not torch.equal(v, resumed["state_dict"][k])]
    assert not differ, f"killed after step {killed_at} (asked {kill_after}): {len(differ)} tensors differ: {differ[:4]}"
    a, b = whole["optimizer_states"][0], resumed["optimizer_states"][0]
    assert a["param_groups"][0]["lr"] == b["param_groups"][0]["lr"]
    for i, state in a["state"].items():
        assert all(torch.equal(state[name], b["state"][i][name]) for name in ("exp_avg", "exp_avg_sq", "step")), i


_WRITER = """
import sys, torch
from training.resume import AtomicCheckpointIO
io = AtomicCheckpointIO()
io.save_checkpoint({"version": 1, "w": torch.ones(1000)}, sys.argv[1])
print("first saved", flush=True)
big = {"version": 2, "w": torch.zeros(32, 1024, 1024)}  # 128 MiB: the write takes a while
while True:
    io.save_checkpoint(big, sys.argv[1])
"""


def test_kill_during_checkpoint_write_keeps_previous(tmp_path):
    path = tmp_path / "last.ckpt"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "first saved"
        deadline = time.monotonic() + 60
        tmp = None
        while time.monotonic() < deadline:  # wait until the second write is under way, then kill mid-write
            tmp = next(iter(tmp_path.glob("last.ckpt.tmp-*")), None)
            if tmp is not None and tmp.exists() and tmp.stat().st_size > 1 << 20:
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert tmp is not None and tmp.exists(), "the kill did not land during a write"
    assert is_complete_checkpoint(str(path)) and not is_complete_checkpoint(str(tmp))
    assert torch.load(path, weights_only=True)["version"] == 1  # the previous checkpoint, whole
    assert find_resume_checkpoint(str(tmp_path)) == str(path)
    assert not list(tmp_path.glob("*.tmp-*"))  # the leftover is cleaned


def test_resume_falls_back_when_last_link_dangles(tmp_path):
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 3}, tmp_path / "step=3.ckpt")
    (tmp_path / "step=4.ckpt").write_bytes(b"PK\x03\x04 cut")  # a file cut short (not written by us)
    os.symlink("step=2.ckpt", tmp_path / "last.ckpt")  # killed after step=2 was removed, before the new link
    assert find_resume_checkpoint(str(tmp_path)) == str(tmp_path / "step=3.ckpt")
    assert find_resume_checkpoint(str(tmp_path / "nothing")) is None


def test_sampler_epochs_buckets_ranks_and_resume():
    groups = ["a"] * 7 + ["b"] * 5
    s = ResumableBatchSampler(12, 2, seed=1, groups=groups)
    assert len(s) == 5  # 3 + 2 full batches; the odd item of each group is left out
    epoch0, epoch1 = s.plan(0), s.plan(1)
    assert epoch0 != epoch1 and epoch0 == ResumableBatchSampler(12, 2, seed=1, groups=groups).plan(0)
    assert all(len({groups[i] for i in batch}) == 1 for batch in epoch0)
    s.go_to(1, 3)
    assert list(s) == epoch1[3:] and list(s) == epoch1  # the start holds for one iteration
    ranks = [ResumableBatchSampler(12, 2, seed=1, groups=groups, rank=r, world_size=2) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 2
    both = ranks[0].plan(0) + ranks[1].plan(0)
    assert len({i for batch in both for i in batch}) == 8  # disjoint
    with pytest.raises(ValueError, match="no full batch of 8"):
        ResumableBatchSampler(12, 8, groups=groups)
    assert derive_seed(1, 2) != derive_seed(2, 1) and derive_seed(5) == derive_seed(5)


def test_resume_if_possible_starts_fresh_without_checkpoint(workspace, tmp_path):
    args = build_parser().parse_args(_argv(workspace, tmp_path / "new", "--resume-if-possible"))
    check_args(args)
    assert args.resume_training is False
