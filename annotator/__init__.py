"""Annotators: turn a photo into the control map a ControlNet 1.0 model was trained on.

Each detector lives in its own subpackage and is imported on demand (`from annotator.hed import
HEDdetector`); importing this package loads no network and no weights.
"""
