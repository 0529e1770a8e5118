"""Control Stable Diffusion with normal maps derived from MiDaS depth:
upstream's `gradio_normal2image.py`. See `--help` for the flags."""
from cldm.app import tasks
from cldm.app.cli import main

if __name__ == "__main__":
    main(tasks.NORMAL)
