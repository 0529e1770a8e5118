"""Build models from yaml configs and load checkpoints safely.

Checkpoints are read with ``safetensors`` or ``torch.load(weights_only=True)``: no pickled code runs.
``load_checkpoint`` tolerates the layout drifts of real files (listed in ``KNOWN_DRIFTS``), says what it
tolerated, and refuses a file of the wrong family with one message naming the file and the keys.
"""
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import torch
from omegaconf import OmegaConf

from ldm.util import instantiate_from_config

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read or does not fit the model."""


def create_model(config_path: str, device: Optional[str] = None, **overrides) -> torch.nn.Module:
    """Instantiate ``config.model`` from a yaml file; ``overrides`` replace its ``params``.

    ``device='meta'`` builds shapes only (for key checks); weights are random-initialised otherwise.
    """
    with torch.device(device or "cpu"):
        model = instantiate_from_config(load_model_config(config_path), **overrides)
    log.info("built %s from %s", type(model).__name__, config_path)
    return model


def create_control_net(config_path: str, device: Optional[str] = None) -> torch.nn.Module:
    """Only the ControlNet of a ControlLDM config (``control_stage_config``), freshly initialised, with the
    model-level flag that belongs to it (1.1 shuffle's ``global_average_pooling``) as ``ControlLDM`` sets it."""
    params = load_model_config(config_path)["params"]
    with torch.device(device or "cpu"):
        net = instantiate_from_config(params["control_stage_config"])
    if params.get("global_average_pooling"):
        net.global_average_pooling = True
    return net


def load_model_config(config_path: str) -> dict:
    """The ``model:`` section of a yaml config, as plain containers."""
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"config file not found: {config_path}")
    config = OmegaConf.to_container(OmegaConf.load(config_path), resolve=True)
    if "model" not in config:
        raise ValueError(f"{config_path}: expected a top-level 'model:' section")
    return config["model"]


def load_state_dict(path: str, location: str = "cpu") -> Dict[str, torch.Tensor]:
    """Read a ``.safetensors``/``.ckpt``/``.pth`` file into a flat state dict (unwrapping ``state_dict``)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            sd = load_file(path, device=str(location))
        else:
            sd = _torch_load(path, location)
    except Exception as e:  # corrupt, truncated, empty or pickled-code files all end here
        first_line = next(iter(str(e).splitlines()), "") or "no details"  # some errors have an empty message
        what = ("the file is empty (0 bytes): an interrupted download?" if os.path.getsize(path) == 0
                else f"{type(e).__name__}: {first_line}")
        raise CheckpointError(f"cannot read checkpoint {path}: {what}") from e
    while isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    log.info("loaded state_dict from [%s]", path)
    return sd


def _torch_load(path: str, location) -> dict:
    """``torch.load(weights_only=True)``, memory-mapped when the file is in the zip format (all files saved
    by torch >= 1.6), so a multi-GB checkpoint is paged in as used instead of read whole."""
    import zipfile
    return torch.load(path, map_location=location, weights_only=True, mmap=zipfile.is_zipfile(path))


def save_state_dict(sd: Dict[str, torch.Tensor], path: str) -> None:
    """Write ``sd`` atomically (temporary file + rename), format by extension; never overwrites."""
    if os.path.exists(path):
        raise FileExistsError(f"output file already exists: {path}")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import save_file
            save_file({k: v.contiguous() for k, v in sd.items()}, tmp)
        else:
            torch.save(sd, tmp)
        os.link(tmp, path)  # fails if `path` appeared meanwhile, unlike rename
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# Keys that real files may have or lack without anything being wrong (see shared manifests README).
SCHEDULE_KEYS = re.compile(r"^(betas|alphas_cumprod|alphas_cumprod_prev|sqrt_alphas_cumprod|"
                           r"sqrt_one_minus_alphas_cumprod|log_one_minus_alphas_cumprod|sqrt_recip_alphas_cumprod|"
                           r"sqrt_recipm1_alphas_cumprod|posterior_variance|posterior_log_variance_clipped|"
                           r"posterior_mean_coef1|posterior_mean_coef2|logvar)$")
KNOWN_DRIFTS = {
    "position_ids": re.compile(r"(^|\.)position_ids$"),  # written by transformers < 4.31 only
    "schedule buffers": SCHEDULE_KEYS,  # recomputed from the config; dropped by many SD files
    "EMA weights": re.compile(r"^model_ema\."),  # present in v1-5-pruned.ckpt; used only with use_ema
}


@dataclass
class LoadReport:
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    tolerated: Dict[str, List[str]] = field(default_factory=dict)

    def summary(self) -> str:
        parts = [f"{len(keys)} {what}" for what, keys in self.tolerated.items() if keys]
        return "tolerated " + "; ".join(parts) if parts else "exact match"


def _family(keys: Iterable[str], config: Optional[str] = None) -> str:
    """What a file with these keys looks like; for SD, which config fits it (unless ``config``, in use, is it)."""
    keys = list(keys)

    def sd(name: str, encoder: str, fitting: str) -> str:
        if config is not None and os.path.basename(config) == os.path.basename(fitting):
            return f"{name} ({encoder}), the family of {config}, but with another layout"
        return f"{name} ({encoder}, use {fitting})"

    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return sd("Stable Diffusion 2.x", "OpenCLIP text encoder", "models/cldm_v21.yaml")
    if any(k.startswith("cond_stage_model.transformer.") for k in keys):
        return sd("Stable Diffusion 1.x", "CLIP text encoder", "models/cldm_v15.yaml")
    if any("lora" in k.lower() for k in keys[:50]):
        return "a LoRA (not a full checkpoint)"
    if keys and not any(k.startswith(("model.diffusion_model.", "control_model.")) for k in keys):
        return "not a Stable Diffusion / ControlNet checkpoint"
    return "unknown"


def _examples(keys: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... (+{len(keys) - n} more)" if len(keys) > n else "")


def check_state_dict(model: torch.nn.Module, sd: Mapping[str, torch.Tensor], allow_missing: Sequence[str] = (),
                     source: str = "<state dict>", config: Optional[str] = None) -> LoadReport:
    """Compare ``sd``'s keys and shapes with ``model``'s (a ``meta`` model is enough) without loading anything.

    Strict but for ``KNOWN_DRIFTS`` and the key prefixes in ``allow_missing`` (e.g. ``('control_model.',)``
    to start a ControlNet from an SD file). Raises ``CheckpointError`` naming the file, the likely family of
    the file (``config``: the model's yaml, not suggested again) and the mismatched keys; otherwise the report's
    ``missing`` lists the allowed-absent keys.
    """
    own = model.state_dict()
    report = LoadReport()

    def drift(key: str) -> Optional[str]:
        return next((name for name, pattern in KNOWN_DRIFTS.items() if pattern.search(key)), None)

    for key in [k for k in sd if k not in own]:
        name = drift(key)
        if name is not None:
            report.tolerated.setdefault(f"{name} in the file, unused", []).append(key)
        else:
            report.unexpected.append(key)
    missing = []
    for key in [k for k in own if k not in sd]:
        name = drift(key)
        if name is not None:
            report.tolerated.setdefault(f"{name} absent from the file, kept from the config", []).append(key)
        elif key.startswith(tuple(allow_missing)):
            missing.append(key)
        else:
            report.missing.append(key)
    mismatched = [f"{k}: file {list(sd[k].shape)} vs model {list(own[k].shape)}"
                  for k in sd if k in own and sd[k].shape != own[k].shape]
    # Any float precision loads (it is cast), but integers, booleans or complex numbers for float weights do not
    # (float position_ids for the int64 buffer are common in merged SD files and load, as upstream).
    mismatched += [f"{k}: file {sd[k].dtype} vs model {own[k].dtype}" for k in sd if k in own and (
        own[k].is_floating_point() and not sd[k].is_floating_point() or sd[k].is_complex())]
    if report.missing or report.unexpected or mismatched:
        lines = [f"checkpoint {source} does not fit {type(model).__name__}; the file looks like: {_family(sd, config)}"]
        if mismatched:
            lines.append(f"  {len(mismatched)} keys with other shapes or types: {_examples(mismatched, 3)}")
        if report.missing:
            lines.append(f"  {len(report.missing)} keys missing from the file: {_examples(report.missing)}")
        if report.unexpected:
            lines.append(f"  {len(report.unexpected)} unexpected keys in the file: {_examples(report.unexpected)}")
        raise CheckpointError("\n".join(lines))
    report.missing = missing
    return report


def load_checkpoint(model: torch.nn.Module, sd_or_path, allow_missing: Sequence[str] = (),
                    source: Optional[str] = None) -> LoadReport:
    """Load a state dict (or a file) into ``model`` after ``check_state_dict`` (same rules and errors)."""
    source = source or (sd_or_path if isinstance(sd_or_path, str) else "<state dict>")
    sd = load_state_dict(sd_or_path) if isinstance(sd_or_path, str) else sd_or_path
    report = check_state_dict(model, sd, allow_missing, source)
    own = model.state_dict()
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
    if report.missing:
        log.info("%s: %d keys left at their initial values (%s...)", source, len(report.missing), report.missing[0])
    log.info("%s: %s", source, report.summary())
    return report
