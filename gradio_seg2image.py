"""Control Stable Diffusion with ADE20K segmentation maps (UniFormer):
upstream's `gradio_seg2image.py`. See `--help` for the flags."""
from cldm.app import tasks
from cldm.app.cli import main

if __name__ == "__main__":
    main(tasks.SEG)
