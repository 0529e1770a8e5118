"""Control Stable Diffusion with HED soft-edge maps:
upstream's `gradio_hed2image.py`. See `--help` for the flags."""
from cldm.app import tasks
from cldm.app.cli import main

if __name__ == "__main__":
    main(tasks.HED)
