"""Control Stable Diffusion with Canny edge maps:
upstream's `gradio_canny2image.py`. See `--help` for the flags."""
from cldm.app import tasks
from cldm.app.cli import main

if __name__ == "__main__":
    main(tasks.CANNY)
