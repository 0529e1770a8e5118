"""The training data set in Fill50K layout (upstream ``tutorial_dataset.py``).

A folder with ``prompt.json`` (JSON lines ``{"source": ..., "target": ..., "prompt": ...}``, paths relative to
the folder), the condition images and the target images. Your own data works the same way once written in
this layout.
"""
import json
import os
from typing import Dict, Union

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset


class PromptDataset(Dataset):
    """Items ``{'jpg': (H, W, 3) float32 target in [-1, 1], 'txt': prompt, 'hint': (H, W, 3) float32 in [0, 1]}``.

    ``prompt_dropout`` replaces the prompt by ``""`` with that probability: the paper trains with 50% empty
    prompts so the ControlNet learns to read the condition image alone (upstream's code does not; default 0).
    """

    def __init__(self, root: str = "./training/fill50k/", prompt_dropout: float = 0.0):
        if not 0.0 <= prompt_dropout <= 1.0:
            raise ValueError(f"prompt_dropout must be in [0, 1], got {prompt_dropout}")
        index = os.path.join(root, "prompt.json")
        if not os.path.isfile(index):
            raise FileNotFoundError(f"{index} not found; generate the Fill50K data set with: "
                                    f"python -m training.fill50k --out {root}")
        with open(index) as f:
            self.items = [json.loads(line) for line in f if line.strip()]
        self.root = root
        self.prompt_dropout = prompt_dropout

    def __len__(self) -> int:
        return len(self.items)

    def _read_rgb(self, relative_path: str) -> np.ndarray:
        path = os.path.join(self.root, relative_path)
        image = cv2.imread(path)
        if image is None:
            raise FileNotFoundError(f"cannot read image {path}")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def __getitem__(self, idx: int) -> Dict[str, Union[np.ndarray, str]]:
        item = self.items[idx]
        hint = self._read_rgb(item["source"]).astype(np.float32) / 255.0
        target = self._read_rgb(item["target"]).astype(np.float32) / 127.5 - 1.0
        prompt = item["prompt"]
        # torch's generator: DataLoader seeds it differently in every worker process.
        if self.prompt_dropout > 0 and torch.rand(()).item() < self.prompt_dropout:
            prompt = ""
        return {"jpg": target, "txt": prompt, "hint": hint}
