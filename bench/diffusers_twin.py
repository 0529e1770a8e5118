"""Convert our UNet + ControlNet weights into diffusers models (the independent reference for benchmarks)."""
import warnings

import torch
import yaml

CONTROLNET_KEYS = ("in_channels", "down_block_types", "block_out_channels", "layers_per_block", "cross_attention_dim",
                   "attention_head_dim", "use_linear_projection", "class_embed_type", "addition_embed_type",
                   "addition_time_embed_dim", "projection_class_embeddings_input_dim", "transformer_layers_per_block")


def diffusers_twin(config_path: str, state_dict: dict, latent_size: int):
    """Return (UNet2DConditionModel, ControlNetModel) holding the weights of ``state_dict`` (our layout)."""
    import diffusers
    from diffusers.loaders import single_file_utils as sfu

    original = yaml.safe_load(open(config_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        unet_cfg = sfu.create_unet_diffusers_config_from_ldm(original, state_dict, image_size=latent_size)
    # diffusers 0.42's create_controlnet_diffusers_config_from_ldm is broken: derive it from the UNet's.
    cn_cfg = {k: unet_cfg[k] for k in CONTROLNET_KEYS if k in unet_cfg}
    cn_cfg["conditioning_channels"] = original["model"]["params"]["control_stage_config"]["params"]["hint_channels"]
    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel(**unet_cfg)
        controlnet = diffusers.ControlNetModel(**cn_cfg)
    unet.load_state_dict(sfu.convert_ldm_unet_checkpoint(state_dict, unet_cfg), strict=True, assign=True)
    controlnet.load_state_dict(sfu.convert_controlnet_checkpoint(state_dict, cn_cfg), strict=True, assign=True)
    return unet.eval(), controlnet.eval()
