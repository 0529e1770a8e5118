"""Control Stable Diffusion with scribbles drawn on a canvas in the page:
upstream's `gradio_scribble2image_interactive.py`. See `--help` for the flags."""
from cldm.app import tasks
from cldm.app.cli import main

if __name__ == "__main__":
    main(tasks.SCRIBBLE_INTERACTIVE)
