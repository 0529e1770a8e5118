"""Make ./models/control_sd21_ini.ckpt from Stable Diffusion 2.1 (``tool_add_control.py`` with SD2.1 defaults).

    python tool_add_control_sd21.py ./models/v2-1_512-ema-pruned.ckpt ./models/control_sd21_ini.ckpt
"""
from training.control_weights import add_control_cli

if __name__ == "__main__":
    add_control_cli("./models/v2-1_512-ema-pruned.ckpt", "./models/control_sd21_ini.ckpt", "./models/cldm_v21.yaml")
