"""The annotators alone, one tab each (upstream's `gradio_annotator.py`): see the control maps, no diffusion."""
from cldm.app.cli import main_annotator

if __name__ == "__main__":
    main_annotator()
