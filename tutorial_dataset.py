"""Upstream's ``tutorial_dataset.py``: ``MyDataset`` reads ``./training/fill50k/`` (see ``training/dataset.py``)."""
from training.dataset import PromptDataset as MyDataset

__all__ = ["MyDataset"]
