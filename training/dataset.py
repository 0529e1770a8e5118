"""The training data set in Fill50K layout (upstream ``tutorial_dataset.py``).

A folder with ``prompt.json`` (JSON lines ``{"source": ..., "target": ..., "prompt": ...}``, paths relative to
the folder), the condition images and the target images. Your own data works the same way once written in
this layout. The index is checked when the data set is made (JSON, fields, files present), so a broken data
set fails before training starts, with the file and line to fix.
"""
import json
import os
from typing import Dict, List, Union

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

FIELDS = ("source", "target", "prompt")


class DatasetError(ValueError):
    """A data set file that is malformed, corrupt or inconsistent; the message names the file."""


def read_index(index: str) -> List[dict]:
    """The samples of a ``prompt.json``; ``DatasetError`` naming the file and line of the first bad entry."""
    items = []
    with open(index, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetError(f"{index}, line {number}: not valid JSON ({e.msg}, column {e.colno}); each "
                                   'line must be {"source": ..., "target": ..., "prompt": ...}') from e
            if not isinstance(item, dict) or any(not isinstance(item.get(k), str) for k in FIELDS):
                raise DatasetError(f"{index}, line {number}: expected an object with the text fields "
                                   f"{', '.join(FIELDS)}, got {line.strip()[:100]!r}")
            items.append({k: item[k] for k in FIELDS} | {"line": number})
    if not items:
        raise DatasetError(f"{index} lists no samples: write one JSON line per sample, or regenerate the data set")
    return items


def missing_files(root: str, items: List[dict]) -> List[str]:
    """'line N: path' for every listed image that is not a file under ``root``."""
    return [f"line {item['line']}: {os.path.join(root, item[k])}" for item in items for k in ("source", "target")
            if not os.path.isfile(os.path.join(root, item[k]))]


class PromptDataset(Dataset):
    """Items ``{'jpg': (H, W, 3) float32 target in [-1, 1], 'txt': prompt, 'hint': (H, W, 3) float32 in [0, 1]}``.

    ``prompt_dropout`` replaces the prompt by ``""`` with that probability: the paper trains with 50% empty
    prompts so the ControlNet learns to read the condition image alone (upstream's code does not; default 0).
    Raises ``FileNotFoundError`` without ``prompt.json`` and ``DatasetError`` for a malformed or empty index or
    listed files that are missing; reading an item raises ``DatasetError`` for a corrupt image or a target
    whose size differs from its condition.
    """

    def __init__(self, root: str = "./training/fill50k/", prompt_dropout: float = 0.0):
        if not 0.0 <= prompt_dropout <= 1.0:
            raise ValueError(f"prompt_dropout must be in [0, 1], got {prompt_dropout}")
        index = os.path.join(root, "prompt.json")
        if not os.path.isfile(index):
            raise FileNotFoundError(f"{index} not found; generate the Fill50K data set with: "
                                    f"python -m training.fill50k --out {root}")
        self.items = read_index(index)
        missing = missing_files(root, self.items)
        if missing:
            shown = "; ".join(missing[:3]) + (f"; ... (+{len(missing) - 3} more)" if len(missing) > 3 else "")
            raise DatasetError(f"{index}: {len(missing)} of the {2 * len(self.items)} images it lists are missing: "
                               f"{shown}")
        self.root = root
        self.prompt_dropout = prompt_dropout

    def __len__(self) -> int:
        return len(self.items)

    def _read_rgb(self, relative_path: str) -> np.ndarray:
        path = os.path.join(self.root, relative_path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image not found: {path} (listed in {os.path.join(self.root, 'prompt.json')})")
        image = cv2.imread(path)
        if image is None:
            raise DatasetError(f"cannot decode image {path}: the file is corrupt or not an image")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def __getitem__(self, idx: int) -> Dict[str, Union[np.ndarray, str]]:
        item = self.items[idx]
        hint, target = self._read_rgb(item["source"]), self._read_rgb(item["target"])
        if hint.shape != target.shape:
            raise DatasetError(f"{os.path.join(self.root, item['target'])} is {target.shape[1]}x{target.shape[0]} but "
                               f"its condition {os.path.join(self.root, item['source'])} is "
                               f"{hint.shape[1]}x{hint.shape[0]}: a sample's two images must have one size")
        prompt = item["prompt"]
        # torch's generator: DataLoader seeds it differently in every worker process.
        if self.prompt_dropout > 0 and torch.rand(()).item() < self.prompt_dropout:
            prompt = ""
        return {"jpg": target.astype(np.float32) / 127.5 - 1.0, "txt": prompt,
                "hint": hint.astype(np.float32) / 255.0}
