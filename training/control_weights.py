"""Make and transfer ControlNet weights (upstream ``tool_add_control.py`` and ``tool_transfer_control.py``).

* ``add_control``: a ControlLDM state dict from a Stable Diffusion one. Every ``control_model.X`` starts as a
  copy of ``model.diffusion_model.X`` (the ControlNet is a trainable copy of the UNet encoder, paper
  section 3.2); the keys without a counterpart (the hint block and the 13 zero convs) keep their fresh
  initialisation, whose last layers are zero so the new model equals the SD model.
* ``transfer_control``: move a ControlNet trained on one base model onto another (e.g. SD1.5 -> Anything v3)
  by adding the base models' difference to the ControlNet's UNet-copy weights and to the file's own UNet.

Inputs are never modified; outputs are written atomically and never over an existing file.
"""
import argparse
import logging
import os
from contextlib import contextmanager
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from cldm.model import (CheckpointError, check_state_dict, create_control_net, create_model, load_model_config,
                        load_state_dict, save_state_dict)

log = logging.getLogger(__name__)

StateDict = Dict[str, torch.Tensor]
CONTROL = "control_model."
UNET = "model.diffusion_model."
FROZEN_PARTS = ("first_stage_model.", "cond_stage_model.")  # VAE and text encoder: always the base model's


def unet_counterpart(key: str) -> str:
    """``control_model.X`` -> ``model.diffusion_model.X``."""
    return UNET + key[len(CONTROL):]


def _fresh_control_model(config_path: str, seed: int) -> torch.nn.Module:
    """The config's ControlNet with its initial weights (the zero convs zero), built for real."""
    with torch.random.fork_rng(devices=[]):  # seeded, without touching the caller's random state
        torch.manual_seed(seed)
        return create_control_net(config_path)


def add_control(sd: Mapping[str, torch.Tensor], config_path: str, seed: int = 0,
                source: str = "the input checkpoint") -> Tuple[StateDict, List[str]]:
    """SD state dict -> (ControlLDM state dict, keys newly initialised).

    The ControlLDM is built on the meta device (keys and shapes only); only its ControlNet is built with real
    weights. ``logvar`` is written even when ``sd`` lacks it (older SD files, where it was no buffer), from the
    config's ``logvar_init``, and listed as new, as upstream does; the other keys the loader recomputes from the
    config (schedule buffers, ``position_ids``) are left out when ``sd`` lacks them. Raises ``CheckpointError``
    when ``sd`` does not fit the config's SD part or already holds a ControlNet.
    """
    if any(k.startswith(CONTROL) for k in sd):
        raise CheckpointError(f"{source} already holds a ControlNet ({CONTROL}* keys); start from a plain "
                              "Stable Diffusion checkpoint")
    target = create_model(config_path, device="meta")
    check_state_dict(target, sd, allow_missing=(CONTROL,), source=source, config=config_path)
    wanted = target.state_dict()
    control = _fresh_control_model(config_path, seed)
    control_sd = control.state_dict()
    fresh = []
    with torch.no_grad():
        for name, value in control_sd.items():
            twin = sd.get(unet_counterpart(CONTROL + name))
            if twin is not None and twin.shape == value.shape:
                value.copy_(twin)
            else:
                fresh.append(CONTROL + name)
    out = {}
    for key, meta in wanted.items():
        if key.startswith(CONTROL):
            out[key] = control_sd[key[len(CONTROL):]]
        elif key in sd:
            out[key] = sd[key].to(meta.dtype)  # as upstream: the output holds the model's dtypes
        elif key == "logvar":
            logvar_init = load_model_config(config_path)["params"].get("logvar_init", 0.0)
            out[key] = torch.full(meta.shape, float(logvar_init), dtype=meta.dtype)
            fresh.append(key)
    return out, fresh


def transfer_control(base: Mapping[str, torch.Tensor], control: Mapping[str, torch.Tensor],
                     new_base: Mapping[str, torch.Tensor],
                     source: str = "the control checkpoint") -> Tuple[StateDict, Dict[str, List[str]]]:
    """Upstream's transfer: every key ``k`` of ``control`` becomes ``control[k] + (new_base[t] - base[t])`` where
    ``t`` is its base-model twin (``model.diffusion_model.X`` for ``control_model.X``, ``k`` itself otherwise)
    and both bases hold ``t``; else it is kept as is. The VAE and text encoder come from ``new_base``.

    So the UNet keeps what the ControlNet training changed in it (the decoder of an ``sd_locked=False`` run) on
    top of the new base. Keys ``control`` lacks are not written, as upstream. Returns (state dict, report) where
    the report lists the keys 'transferred' (ControlNet), 'offset' (other keys moved by the bases' difference),
    'kept' (ControlNet keys without a UNet twin: hint block, zero convs) and 'kept_missing_in_new_base'.
    Raises ``CheckpointError`` when ``control`` holds no ControlNet or the bases' shapes differ.
    """
    if not any(k.startswith(CONTROL) for k in control):
        raise CheckpointError(f"{source} holds no ControlNet (no {CONTROL}* keys): the control file must be a "
                              "ControlNet checkpoint such as control_sd15_openpose.pth, not a plain SD one")
    out: StateDict = {}
    report: Dict[str, List[str]] = {"transferred": [], "offset": [], "kept": [], "kept_missing_in_new_base": []}
    for key, value in control.items():
        if key.startswith(FROZEN_PARTS):
            if key not in new_base:
                raise CheckpointError(f"the new base model lacks {key}: is it a full Stable Diffusion checkpoint?")
            out[key] = new_base[key]
            continue
        is_control = key.startswith(CONTROL)
        twin = unet_counterpart(key) if is_control else key
        if twin in base and twin in new_base:
            if not base[twin].shape == new_base[twin].shape == value.shape:
                raise CheckpointError(f"{twin}: shapes differ (base {list(base[twin].shape)}, new base "
                                      f"{list(new_base[twin].shape)}, control {list(value.shape)}); "
                                      "are the base models of the same family?")
            delta = new_base[twin].double() - base[twin].double()
            out[key] = (value.double() + delta).to(value.dtype)
            report["transferred" if is_control else "offset"].append(key)
        else:
            out[key] = value
            report["kept" if is_control else "kept_missing_in_new_base"].append(key)
    return out, report


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")


def add_control_cli(default_input: str, default_output: str, default_config: str,
                    argv: Optional[Sequence[str]] = None) -> None:
    """``tool_add_control*.py IN OUT [--config]``: the defaults differ per SD version."""
    parser = argparse.ArgumentParser(description="Make the initial ControlNet checkpoint from a Stable Diffusion one.")
    parser.add_argument("input", nargs="?", default=default_input, help="SD checkpoint (default: %(default)s)")
    parser.add_argument("output", nargs="?", default=default_output,
                        help="ControlLDM checkpoint to write, .ckpt/.pth/.safetensors (default: %(default)s)")
    parser.add_argument("--config", default=default_config, help="ControlLDM config (default: %(default)s)")
    args = parser.parse_args(argv)
    _setup_logging()
    _refuse_existing(args.output)
    with _user_errors():
        out, fresh = add_control(load_state_dict(args.input), args.config, source=args.input)
        for key in fresh:
            print(f"These weights are newly added: {key}")
        save_state_dict(out, args.output)
    print(f"Done: {len(out)} tensors, {len(fresh)} newly initialised, written to {args.output}")


def transfer_control_cli(argv: Optional[Sequence[str]] = None) -> None:
    """``tool_transfer_control.py``: upstream's paths as defaults."""
    parser = argparse.ArgumentParser(description="Move a ControlNet onto another SD1.x base model.")
    parser.add_argument("--base", default="./models/v1-5-pruned.ckpt",
                        help="the base model the ControlNet was trained on (default: %(default)s)")
    parser.add_argument("--control", default="./models/control_sd15_openpose.pth",
                        help="the ControlNet checkpoint (default: %(default)s)")
    parser.add_argument("--new-base", default="./models/anything-v3-full.safetensors",
                        help="the base model to move it onto (default: %(default)s)")
    parser.add_argument("--out", default="./models/control_any3_openpose.pth", help="output (default: %(default)s)")
    args = parser.parse_args(argv)
    _setup_logging()
    _refuse_existing(args.out)
    with _user_errors():
        base, control, new_base = (load_state_dict(p) for p in (args.base, args.control, args.new_base))
        out, report = transfer_control(base, control, new_base, source=args.control)
        save_state_dict(out, args.out)
    print(f"Transferred {len(report['transferred'])} ControlNet tensors, kept {len(report['kept'])} "
          f"(hint block, zero convs); {len(report['offset'])} other tensors moved by the same base difference; "
          f"{len(out)} tensors written to {args.out}")
    if report["kept_missing_in_new_base"]:
        print(f"Kept as in the control file (absent from a base): {report['kept_missing_in_new_base']}")


def _refuse_existing(path: str) -> None:
    """Fail before the slow loading, not after (save_state_dict checks again at the end)."""
    if os.path.exists(path):
        raise SystemExit(f"error: output file already exists: {path} (remove it or choose another name)")


@contextmanager
def _user_errors():
    """A missing, unreadable or unfitting file is the user's to fix: one line, no traceback."""
    try:
        yield
    except (FileNotFoundError, FileExistsError, CheckpointError) as e:
        raise SystemExit(f"error: {e}") from e
