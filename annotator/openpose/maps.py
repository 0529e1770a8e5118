"""Running a CPM network at one scale and bringing its maps back to image size (upstream body.py/hand.py)."""
import cv2
import numpy as np

BOX_SIZE = 368  # the nets' training input height
STRIDE = 8  # output maps are 1/8 of the input
PAD_VALUE = 128


def _net_maps(run_net, resized: np.ndarray) -> list:
    """``run_net``'s outputs on ``resized`` padded bottom/right to a multiple of 8 with grey 128 and normalised to
    x / 256 - 0.5, each as an (h/8, w/8, C) float32 array (upstream's input convention, 1.0 and 1.1 alike)."""
    rh, rw = resized.shape[:2]
    padded = cv2.copyMakeBorder(resized, 0, -rh % STRIDE, 0, -rw % STRIDE, cv2.BORDER_CONSTANT,
                                value=(PAD_VALUE,) * 3)
    return [out[0].permute(1, 2, 0).float().cpu().numpy() for out in run_net(padded.astype(np.float32) / 256 - 0.5)]


def cpm_maps(run_net, bgr: np.ndarray, scale: float) -> list:
    """Maps of `run_net` on `bgr` resized by `scale`, each returned as (H, W, C) float32 at `bgr`'s size.

    run_net: (h, w, 3) float32 input -> tuple of (1, C, h/8, w/8) tensors. The resized image is padded
    bottom/right to a multiple of 8 with grey 128 and normalised to x / 256 - 0.5; each output is upscaled
    x8 (bicubic), cropped to the unpadded area, then resized to the image (bicubic), as upstream.
    """
    h, w = bgr.shape[:2]
    resized = cv2.resize(bgr, (0, 0), fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    rh, rw = resized.shape[:2]
    maps = []
    for small in _net_maps(run_net, resized):
        full = cv2.resize(small, (0, 0), fx=STRIDE, fy=STRIDE, interpolation=cv2.INTER_CUBIC)[:rh, :rw]
        maps.append(cv2.resize(full, (w, h), interpolation=cv2.INTER_CUBIC))
    return maps


def gaussian_smooth(maps: np.ndarray, sigma: float = 3.0) -> np.ndarray:
    """scipy.ndimage.gaussian_filter(sigma) per channel: 'reflect' border (abc|cba), taps to 4 sigma."""
    ksize = 2 * int(4.0 * sigma + 0.5) + 1
    return cv2.GaussianBlur(maps, (ksize, ksize), sigma, borderType=cv2.BORDER_REFLECT)


def smart_resize(x: np.ndarray, height: float, width: float) -> np.ndarray:
    """ControlNet 1.1's resize (`openpose/util.py` `smart_resize`): to (int(height), int(width)), area
    interpolation when the mean side shrinks, Lanczos otherwise; maps are resized channel by channel
    (OpenCV's area resize takes at most 4 channels)."""
    k = (height + width) / float(x.shape[0] + x.shape[1])
    size = (int(width), int(height))
    interpolation = cv2.INTER_AREA if k < 1 else cv2.INTER_LANCZOS4
    if x.ndim == 2 or x.shape[2] in (1, 3):
        out = cv2.resize(x, size, interpolation=interpolation)
        return out.reshape(size[1], size[0], *x.shape[2:])
    return np.stack([cv2.resize(x[:, :, c], size, interpolation=interpolation) for c in range(x.shape[2])], axis=2)


def cpm_maps_v11(run_net, bgr: np.ndarray, net_size, out_size) -> list:
    """ControlNet 1.1's version of `cpm_maps`: `bgr` is `smart_resize`d to `net_size` (h, w; floats are
    truncated), padded and normalised as there; each output is `smart_resize`d x8, cropped to the unpadded
    area, then `smart_resize`d to `out_size` (h, w). Returns (h, w, C) float32 maps."""
    resized = smart_resize(bgr, *net_size)
    rh, rw = resized.shape[:2]
    maps = []
    for small in _net_maps(run_net, resized):
        full = smart_resize(small, small.shape[0] * STRIDE, small.shape[1] * STRIDE)[:rh, :rw]
        maps.append(smart_resize(full, *out_size))
    return maps
