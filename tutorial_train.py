"""Train a ControlNet on Fill50K from SD1.5 (upstream ``tutorial_train.py``; flags: ``--help``).

    python -m training.fill50k && python tool_add_control.py ./models/v1-5-pruned.ckpt ./models/control_sd15_ini.ckpt
    python tutorial_train.py [--batch-size 4 --lr 1e-5 --precision 32 ...]
"""
from training.train import main

if __name__ == "__main__":
    main()
