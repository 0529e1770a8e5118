"""Move a ControlNet onto another SD1.x base model: control + (new base - base) on the UNet-copy weights.

    python tool_transfer_control.py --base ./models/v1-5-pruned.ckpt --control ./models/control_sd15_openpose.pth \
        --new-base ./models/anything-v3-full.safetensors --out ./models/control_any3_openpose.pth
"""
from training.control_weights import transfer_control_cli

if __name__ == "__main__":
    transfer_control_cli()
