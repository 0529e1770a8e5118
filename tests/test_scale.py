"""Scale-out on CPU processes with gloo (issue 21): FSDP (2 processes) and DDP over 2 "nodes" x 1 process with a
loopback rendezvous, a few steps each. Both are 2-way data parallel over the same batches, so they must end with
the same weights (to reduction rounding). Also the 12gb memory preset, with a resume."""
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY_CLDM, training_workspace



@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return training_workspace(tmp_path_factory.mktemp("scale"), count=8, pretrained=True)


def _argv(workspace: Path, out: Path, *extra: str) -> list:
    return [sys.executable, str(ROOT / "tutorial_train.py"), "--config", TINY_CLDM, "--resume",
            str(workspace / "control_ini.ckpt"), "--data-root", str(workspace / "fill50k"), "--output-dir", str(out),
            "--accelerator", "cpu", "--log-every", "0", "--max-steps", "2", "--batch-size", "2", "--seed", "4",
            "--lr", "1e-3", "--sd-unlocked", *extra]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_all(commands, envs, timeout=240) -> list:
    procs = [subprocess.Popen(c, cwd=ROOT, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True) for c, e in zip(commands, envs)]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    return outputs


def _weights(out: Path) -> dict:
    return torch.load(out / "checkpoints" / "last.ckpt")["state_dict"]


@pytest.mark.slow
def test_fsdp_and_two_nodes_train_alike(workspace, tmp_path):
    base = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for key in ("NODE_RANK", "LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        base.pop(key, None)
    fsdp_out, nodes_out = tmp_path / "fsdp", tmp_path / "nodes"
    port = str(_free_port())
    fsdp_log, *node_logs = _run_all(  # all at once: most of each run is process start-up
        [_argv(workspace, fsdp_out, "--devices", "2", "--strategy", "fsdp")]
        + [_argv(workspace, nodes_out, "--num-nodes", "2", "--devices", "1", "--strategy", "ddp")] * 2,
        [dict(base, MASTER_PORT=str(_free_port()))]
        + [dict(base, MASTER_ADDR="127.0.0.1", MASTER_PORT=port, NODE_RANK=str(rank)) for rank in (0, 1)])
    for rank in (0, 1):
        assert f"rank {rank}/2: trained 2 batches, global step 2" in fsdp_log
        assert f"rank {rank}/2: trained 2 batches, global step 2" in node_logs[rank]

    fsdp, nodes = _weights(fsdp_out), _weights(nodes_out)
    start = torch.load(workspace / "control_ini.ckpt")
    start = start.get("state_dict", start)
    assert set(fsdp) == set(nodes)
    moved = [k for k in nodes if k.startswith("control_model.") and not torch.equal(nodes[k], start[k])]
    assert moved  # training happened
    worst = max((fsdp[k] - nodes[k]).abs().max().item() for k in nodes if nodes[k].is_floating_point())
    assert worst < 1e-5, worst


def test_memory_presets_set_their_flags():
    from training.presets import apply_preset
    from training.train import build_parser
    args = apply_preset(build_parser().parse_args(["--batch-size", "4", "--memory-preset", "12gb",
                                                   "--no-grad-checkpointing"]))
    assert (args.batch_size, args.accumulate, args.precision, args.optimizer) == (1, 4, "bf16", "adamw8bit")
    assert args.cache_latents and args.cache_text and not args.no_grad_checkpointing and args.strategy == "auto"
    args = apply_preset(build_parser().parse_args(["--memory-preset", "none", "--precision", "32"]))
    assert args.precision == "32" and not args.cache_latents


def test_12gb_preset_runs_and_resumes(workspace, tmp_path):
    """12gb: batch 1 x 2 accumulated, bf16, cached encodings, 8-bit AdamW (uint8 state in the checkpoint)."""
    from training.train import main
    argv = _argv(workspace, tmp_path / "run", "--memory-preset", "12gb", "--ckpt-every", "1", "--cache-dir",
                 str(tmp_path / "enc"))[2:]
    assert main(argv).global_step == 2
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt")["optimizer_states"][0]["state"]
    quant = next(iter(state.values()))["__bnb_optimizer_quant_state__"]
    assert quant["state1"].dtype == torch.uint8 and quant["state2"].dtype == torch.uint8
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "enc").iterdir()) == ["latents", "text"]
    argv[argv.index("--max-steps") + 1] = "3"
    assert main(argv + ["--resume-training"]).global_step == 3
