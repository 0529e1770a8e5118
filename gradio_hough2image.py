"""Control Stable Diffusion with M-LSD straight-line (Hough) maps:
upstream's `gradio_hough2image.py`. See `--help` for the flags."""
from cldm.app import tasks
from cldm.app.cli import main

if __name__ == "__main__":
    main(tasks.HOUGH)
