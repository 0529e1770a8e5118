"""Control Stable Diffusion with scribbles synthesised from a photo (HED + thinning):
upstream's `gradio_fake_scribble2image.py`. See `--help` for the flags."""
from cldm.app import tasks
from cldm.app.cli import main

if __name__ == "__main__":
    main(tasks.FAKE_SCRIBBLE)
