"""A ControlNet in diffusers' layout: ``ControlNetModel`` key names and its ``config.json``, both ways.

The names are those of diffusers' own converter (``convert_controlnet_checkpoint`` in
``diffusers/loaders/single_file_utils.py``): ``time_embed.0`` <-> ``time_embedding.linear_1``, encoder block
``input_blocks.i`` -> ``down_blocks.<level>.{resnets,attentions}.<j>`` (or the level's ``downsamplers.0.conv``),
resnet parts ``in_layers.0/2``, ``emb_layers.1``, ``out_layers.0/3``, ``skip_connection`` <-> ``norm1``,
``conv1``, ``time_emb_proj``, ``norm2``, ``conv2``, ``conv_shortcut``; ``zero_convs.i.0`` <->
``controlnet_down_blocks.i``, ``middle_block_out.0`` <-> ``controlnet_mid_block``, and the hint encoder's
eight convolutions ``input_hint_block.{0,2,...,14}`` <-> ``controlnet_cond_embedding.{conv_in, blocks.0-5,
conv_out}``. Transformer internals keep their names. Only names change: tensors are passed through untouched,
so a round trip is bit-exact.

Here the ControlNet's keys are those of the ``ControlNet`` module, without the ``control_model.`` prefix.
"""
import json
import os
import re
import shutil
from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional

import torch

from cldm.model import CheckpointError, load_model_config

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
HINT_CONVS = 8  # input_hint_block convs: diffusers' conv_in, 6 blocks, conv_out
DIFFUSERS_VERSION = "0.27.0"  # written into config.json when diffusers itself is not installed

_RESNET = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
           "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
_RESNET_BACK = {v: k for k, v in _RESNET.items()}
_FIXED = {"time_embed.0.": "time_embedding.linear_1.", "time_embed.2.": "time_embedding.linear_2.",
          "input_blocks.0.0.": "conv_in.", "middle_block_out.0.": "controlnet_mid_block.",
          "middle_block.0.": "mid_block.resnets.0.", "middle_block.1.": "mid_block.attentions.0.",
          "middle_block.2.": "mid_block.resnets.1."}
_FIXED_BACK = {v: k for k, v in _FIXED.items()}


def _resnet_part(rest: str, table: Mapping[str, str]) -> str:
    for old, new in table.items():
        if rest.startswith(old + "."):
            return new + rest[len(old):]
    return rest


def _hint_name(index: int) -> str:
    if index == 0:
        return "conv_in"
    if index == 2 * (HINT_CONVS - 1):
        return "conv_out"
    return f"blocks.{index // 2 - 1}"


def to_diffusers_key(key: str, layers_per_block: int) -> str:
    """One ControlNet key (ours) -> diffusers' name."""
    for old, new in _FIXED.items():
        if key.startswith(old):
            rest = key[len(old):]
            return new + (_resnet_part(rest, _RESNET) if "resnets" in new else rest)
    if m := re.match(r"zero_convs\.(\d+)\.0\.(.+)$", key):
        return f"controlnet_down_blocks.{m[1]}.{m[2]}"
    if m := re.match(r"input_hint_block\.(\d+)\.(.+)$", key):
        return f"controlnet_cond_embedding.{_hint_name(int(m[1]))}.{m[2]}"
    if m := re.match(r"input_blocks\.(\d+)\.(\d+)\.(.+)$", key):
        i, part, rest = int(m[1]), int(m[2]), m[3]
        level, j = divmod(i - 1, layers_per_block + 1)
        if part == 0 and rest.startswith("op."):
            return f"down_blocks.{level}.downsamplers.0.conv.{rest[3:]}"
        if part == 0:
            return f"down_blocks.{level}.resnets.{j}.{_resnet_part(rest, _RESNET)}"
        return f"down_blocks.{level}.attentions.{j}.{rest}"
    raise CheckpointError(f"no diffusers name for the ControlNet key {key}")


def from_diffusers_key(key: str, layers_per_block: int) -> str:
    """One diffusers ``ControlNetModel`` key -> ours."""
    for new, old in _FIXED_BACK.items():
        if key.startswith(new):
            rest = key[len(new):]
            return old + (_resnet_part(rest, _RESNET_BACK) if "resnets" in new else rest)
    if m := re.match(r"controlnet_down_blocks\.(\d+)\.(.+)$", key):
        return f"zero_convs.{m[1]}.0.{m[2]}"
    if m := re.match(r"controlnet_cond_embedding\.(conv_in|conv_out|blocks\.(\d+))\.(.+)$", key):
        index = 0 if m[1] == "conv_in" else 2 * (HINT_CONVS - 1) if m[1] == "conv_out" else 2 * (int(m[2]) + 1)
        return f"input_hint_block.{index}.{m[3]}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)$", key):
        return f"input_blocks.{(int(m[1]) + 1) * (layers_per_block + 1)}.0.op.{m[2]}"
    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$", key):
        i = int(m[1]) * (layers_per_block + 1) + int(m[3]) + 1
        if m[2] == "resnets":
            return f"input_blocks.{i}.0.{_resnet_part(m[4], _RESNET_BACK)}"
        return f"input_blocks.{i}.1.{m[4]}"
    raise CheckpointError(f"not a diffusers ControlNetModel key: {key}")


def our_layers_per_block(keys: Iterable[str]) -> int:
    """num_res_blocks of a ControlNet from its keys: the first downsampler sits at input_blocks.<L + 1>."""
    keys = list(keys)
    down = sorted(int(m[1]) for k in keys if (m := re.match(r"input_blocks\.(\d+)\.0\.op\.", k)))
    if down:
        return down[0] - 1
    blocks = {int(m[1]) for k in keys if (m := re.match(r"input_blocks\.(\d+)\.", k))}
    return max(blocks)  # a single level: every block after conv_in is a resnet


def layers_per_block(config: Optional[Mapping], keys: Iterable[str]) -> int:
    """diffusers' layers_per_block, from the keys (resnets of the first level), checked against the config."""
    found = 1 + max((int(m[1]) for k in keys if (m := re.match(r"down_blocks\.0\.resnets\.(\d+)\.", k))), default=-1)
    if config and "layers_per_block" in config and config["layers_per_block"] != found:
        raise CheckpointError(f"config.json says layers_per_block={config['layers_per_block']} but the weights "
                              f"have {found} resnets per level")
    return found


def to_diffusers_names(keys: Iterable[str]) -> Dict[str, str]:
    """{diffusers name: our name} for a ControlNet's keys."""
    keys = list(keys)
    per_block = our_layers_per_block(keys)
    return {to_diffusers_key(k, per_block): k for k in keys}


def from_diffusers_names(keys: Iterable[str], per_block: int) -> Dict[str, str]:
    """{our name: diffusers name} for a diffusers ControlNetModel's keys."""
    return {from_diffusers_key(k, per_block): k for k in keys}


def to_diffusers(sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Our ControlNet state dict (no prefix) -> diffusers' (same tensors)."""
    return {new: sd[old] for new, old in to_diffusers_names(sd).items()}


def from_diffusers(sd: Mapping[str, torch.Tensor], config: Optional[Mapping] = None) -> Dict[str, torch.Tensor]:
    """diffusers' ControlNetModel state dict -> ours (no prefix; same tensors)."""
    return {new: sd[old] for new, old in from_diffusers_names(sd, layers_per_block(config, sd)).items()}


# --- config.json ---------------------------------------------------------------------------------------------

def diffusers_config(model_config: Mapping) -> dict:
    """diffusers' ControlNetModel config for the ControlNet of a ControlLDM ``model:`` config section (as
    ``cldm.model.load_model_config`` returns it), following diffusers' ``create_unet_diffusers_config_from_ldm``."""
    params = model_config["params"]
    p = params["control_stage_config"]["params"]
    channels = [p["model_channels"] * m for m in p["channel_mult"]]
    down_types, resolution = [], 1
    for level in range(len(channels)):
        down_types.append("CrossAttnDownBlock2D" if resolution in p["attention_resolutions"] else "DownBlock2D")
        resolution *= 2
    if p.get("num_heads", -1) != -1:
        heads = p["num_heads"]  # diffusers' "attention_head_dim" holds the number of heads (its known misnomer)
    else:
        heads = [c // p["num_head_channels"] for c in channels]
    try:
        import diffusers
        version = diffusers.__version__
    except ImportError:
        version = DIFFUSERS_VERSION
    return {
        "_class_name": "ControlNetModel", "_diffusers_version": version,
        "in_channels": p["in_channels"], "conditioning_channels": p["hint_channels"],
        "down_block_types": down_types, "block_out_channels": channels, "layers_per_block": p["num_res_blocks"],
        "cross_attention_dim": p["context_dim"], "attention_head_dim": heads,
        "use_linear_projection": bool(p.get("use_linear_in_transformer", False)),
        "transformer_layers_per_block": p.get("transformer_depth", 1),
        "conditioning_embedding_out_channels": [16, 32, 96, 256],
        "global_pool_conditions": bool(params.get("global_average_pooling", False)),
        "flip_sin_to_cos": True, "freq_shift": 0, "downsample_padding": 1, "mid_block_scale_factor": 1,
        "act_fn": "silu", "norm_num_groups": 32, "norm_eps": 1e-5, "upcast_attention": False,
        "controlnet_conditioning_channel_order": "rgb",
    }


def read_config(path) -> Optional[dict]:
    """The ``config.json`` of a diffusers folder (or next to its weights file), None when absent."""
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        return None
    try:
        return json.loads(config_path.read_text())
    except ValueError as e:
        raise CheckpointError(f"{config_path} is not valid JSON: {e}") from e


def matching_yaml(config: Mapping, models_dir) -> Optional[Path]:
    """Our model yaml for a diffusers ControlNet config: SD2.x by its 1024-wide context, 1.1 shuffle by its
    global pooling, SD1.x otherwise; None when the blocks do not match either (then name a config)."""
    models_dir = Path(models_dir)
    if config.get("cross_attention_dim") == 1024:
        name = "cldm_v21.yaml"
    elif config.get("global_pool_conditions"):
        name = "control_v11e_sd15_shuffle.yaml"
    else:
        name = "cldm_v15.yaml"
    path = models_dir / name
    if not path.is_file():
        return None
    ours = diffusers_config(load_model_config(str(path)))
    structural = ("block_out_channels", "layers_per_block", "cross_attention_dim", "down_block_types")
    if any(list(ours[k]) != list(config.get(k, ours[k])) if isinstance(ours[k], list) else ours[k] != config.get(k)
           for k in structural):
        return None
    return path


# --- folders ---------------------------------------------------------------------------------------------

def save_folder(control_sd: Mapping[str, torch.Tensor], model_config: Mapping, out_dir) -> Path:
    """Write ``out_dir/config.json`` + ``out_dir/diffusion_pytorch_model.safetensors`` for our ControlNet state
    dict (no prefix). Written into a temporary folder renamed at the end; an existing ``out_dir`` is refused."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"output folder already exists: {out_dir}")
    config = diffusers_config(model_config)
    theirs = to_diffusers(control_sd)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    try:
        tmp.mkdir(parents=True)
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        save_file({k: v.contiguous() for k, v in theirs.items()}, str(tmp / WEIGHTS_NAME),
                  metadata={"format": "pt"})
        os.rename(tmp, out_dir)  # atomic; fails if out_dir appeared meanwhile as a non-empty folder
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_dir


def load_folder(path) -> Dict[str, torch.Tensor]:
    """A diffusers ControlNet folder -> our ControlNet state dict (no prefix), tensors as stored."""
    from cldm.loading import control_weights

    with control_weights(path) as source:
        return {k: source.tensor(k) for k in source.shapes()}
