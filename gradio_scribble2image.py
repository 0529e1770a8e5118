"""Control Stable Diffusion with user scribbles (dark strokes on a light image):
upstream's `gradio_scribble2image.py`. See `--help` for the flags."""
from cldm.app import tasks
from cldm.app.cli import main

if __name__ == "__main__":
    main(tasks.SCRIBBLE)
