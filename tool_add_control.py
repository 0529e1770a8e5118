"""Make ./models/control_sd15_ini.ckpt, the starting point of ControlNet training, from Stable Diffusion 1.5.

    python tool_add_control.py ./models/v1-5-pruned.ckpt ./models/control_sd15_ini.ckpt \
        [--config ./models/cldm_v15.yaml]
"""
from training.control_weights import add_control_cli

if __name__ == "__main__":
    add_control_cli("./models/v1-5-pruned.ckpt", "./models/control_sd15_ini.ckpt", "./models/cldm_v15.yaml")
