"""ControlNet 1.1 seg app: upstream ControlNet-v1-1-nightly's `gradio_seg.py`.
See `--help` for the flags and docs/apps_v11.md for the files it needs."""
from cldm.app.cli import main
from cldm.app.tasks_v11 import V11_APPS

if __name__ == "__main__":
    main(V11_APPS["seg"])
