"""ADE20K segmentation colour map (upstream ``annotator/uniformer``, ControlNet 1.0): UniFormer-S + UPerNet in
plain torch, reproducing mmseg's ``inference_segmentor`` + ``show_result_pyplot(..., get_palette('ade'),
opacity=1)``.

Pipeline quirk kept on purpose: mmseg treats the RGB input as BGR and its ``to_rgb=True`` swaps it, so the
network sees the channels reversed. Colours always come from the built-in ADE20K palette, as upstream
passes ``get_palette('ade')`` explicitly; the checkpoint's ``meta`` (CLASSES, PALETTE) is not used.
"""

from functools import cached_property

import cv2
import numpy as np
import torch

from annotator.uniformer.heads import resize_to
from annotator.uniformer.palette import ADE20K_PALETTE
from annotator.uniformer.segmentor import UperNetUniFormer
from annotator.util import BadWeightsError, Detector, check_rgb

WEIGHTS = "upernet_global_small.pth"
MAX_LONG_SIDE, MAX_SHORT_SIDE = 2048, 512  # test-time Resize img_scale=(2048, 512), keep_ratio=True
MIN_NET_SIDE = 32  # four downsamplings (4, 2, 2, 2) must leave at least one pixel
MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
# mmcv's imnormalize multiplies by 1 / std (rounded to float32) rather than dividing by std.
INV_STD = (1.0 / np.array([58.395, 57.12, 57.375])).astype(np.float32)


def net_input_size(h: int, w: int) -> tuple[int, int]:
    """(width, height) after mmcv's keep-ratio rescale to fit 2048 x 512 (rounded half up)."""
    scale = min(MAX_LONG_SIDE / max(h, w), MAX_SHORT_SIDE / min(h, w))
    return int(w * scale + 0.5), int(h * scale + 0.5)


def mmcv_state_dict(checkpoint, filename: str) -> dict:
    """The weights of an mmcv checkpoint (``state_dict`` entry, or the dict itself), ``module.`` prefix removed."""
    if not isinstance(checkpoint, dict):
        raise BadWeightsError(f"{filename} is not a UniFormer file: holds a {type(checkpoint).__name__}")
    state = checkpoint.get("state_dict", checkpoint)
    return {key.removeprefix("module."): value for key, value in state.items()}


class UniformerDetector(Detector):
    """``UniformerDetector()(img)`` -> HxWx3 uint8 RGB map, each pixel its ADE20K class colour.

    weights: file name in the checkpoint folder (or a path). The network loads on the first call.
    """

    def __init__(self, device="cpu", dtype=torch.float32, ckpt_dir=None, weights: str = WEIGHTS):
        super().__init__(device, dtype, ckpt_dir)
        self.weights = weights

    @cached_property
    def net(self) -> UperNetUniFormer:
        state = mmcv_state_dict(self.read_weights(self.weights), self.weights)
        return self.build_net(UperNetUniFormer, state, self.weights, "UniFormer UPerNet")

    @torch.inference_mode()
    def __call__(self, img: np.ndarray) -> np.ndarray:
        img = check_rgb(img)
        h, w = img.shape[:2]
        size = net_input_size(h, w)
        if min(size) < MIN_NET_SIDE:
            raise ValueError(f"image of size {w}x{h} is too elongated to segment: it would be resized to "
                             f"{size[0]}x{size[1]}, and each side must reach {MIN_NET_SIDE} px")
        resized = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)
        x = (resized[:, :, ::-1].astype(np.float32) - MEAN) * INV_STD  # channels reversed, see module docstring
        logits = self.net(self.to_tensor(x)).float()
        if logits.shape[-2:] != (h, w):
            logits = resize_to(logits, (h, w))
        # Upstream takes the argmax of softmax(logits); softmax is monotonic, so the classes are the same.
        classes = logits[0].argmax(dim=0).cpu().numpy()
        return ADE20K_PALETTE[classes]
