"""Train a ControlNet on Fill50K from SD2.1 (upstream ``tutorial_train_sd21.py``; flags: ``--help``).

    python tool_add_control_sd21.py ./models/v2-1_512-ema-pruned.ckpt ./models/control_sd21_ini.ckpt
    python tutorial_train_sd21.py
"""
from training.train import TrainDefaults, main

if __name__ == "__main__":
    main(defaults=TrainDefaults(config="./models/cldm_v21.yaml", resume="./models/control_sd21_ini.ckpt",
                                output_dir="./runs/control_sd21"))
