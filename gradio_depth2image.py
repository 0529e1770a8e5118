"""Control Stable Diffusion with MiDaS depth maps:
upstream's `gradio_depth2image.py`. See `--help` for the flags."""
from cldm.app import tasks
from cldm.app.cli import main

if __name__ == "__main__":
    main(tasks.DEPTH)
