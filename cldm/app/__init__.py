"""Gradio apps for ControlNet 1.0 on one shared builder (upstream's eleven near-copy `gradio_*.py` scripts).

- `tasks`: what differs per app (title, detector, sliders, checkpoint, map display), as records.
- `ui`: the builder (`build_demo`, `build_multi_demo`, `build_annotator_demo`) and the shared `process` core.
- `engine`: model loading and sampling per request; `weights`: which checkpoint or demo model runs.
- `images`: uploads and canvas drawings -> RGB arrays; `annotators`: lazily built detectors.
- `cli`: flags and serving; the top-level `gradio_*.py` scripts call `main(tasks.<TASK>)`.
"""
