"""Control Stable Diffusion with OpenPose human pose drawings:
upstream's `gradio_pose2image.py`. See `--help` for the flags."""
from cldm.app import tasks
from cldm.app.cli import main

if __name__ == "__main__":
    main(tasks.POSE)
