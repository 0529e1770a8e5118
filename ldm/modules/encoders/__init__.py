"""Text encoders (conditioning) of Stable Diffusion: see `modules.py`."""
