"""Train a ControlNet with several processes through Lightning's DDP (flags: ``--help``).

All GPUs by default (NCCL); on a machine without one, 2 CPU processes (gloo), e.g. to check the setup.
``--batch-size`` is per process. Lightning starts the other ranks by re-running this script.

    python tutorial_train_dist.py [--devices 4] [--config ./models/cldm_v15.yaml ...]
"""
import torch

from training.train import TrainDefaults, main

if __name__ == "__main__":
    main(defaults=TrainDefaults(devices="auto" if torch.cuda.is_available() else "2", strategy="ddp",
                                output_dir="./runs/control_sd15_dist"))
