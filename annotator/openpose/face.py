"""Face boxes from body keypoints and face landmarks from the face net's heat maps (ControlNet 1.1
`openpose/util.py` `faceDetect` and `openpose/face.py`)."""
import numpy as np

NOSE, EYES, EARS = 0, (14, 15), (16, 17)
EYE_FACTOR, EAR_FACTOR = 3.0, 1.5  # box half-size: the largest nose-eye distance x 3, nose-ear x 1.5
MIN_BOX = 20
FACE_NET_INPUT = 384  # the crop is resized to 384 x 384 for the net
HEAT_THRESHOLD = 0.05


def face_boxes(candidate: np.ndarray, subset: np.ndarray, height: int, width: int) -> list:
    """Square boxes (x, y, size) in int pixels around each face with a nose and an eye or ear.

    Distances are Chebyshev (max of |dx|, |dy|). The box is centred on the nose, clipped at the top-left;
    upstream clips the size with `x + half-size > width` (half, not the full size), kept here.
    """
    boxes = []
    for person in subset.astype(int):
        if person[NOSE] < 0:
            continue
        x0, y0 = candidate[person[NOSE], :2]
        half = 0.0
        for parts, factor in ((EYES, EYE_FACTOR), (EARS, EAR_FACTOR)):
            for part in parts:
                if person[part] > -1:
                    x1, y1 = candidate[person[part], :2]
                    half = max(half, max(abs(x0 - x1), abs(y0 - y1)) * factor)
        if all(person[p] < 0 for p in EYES + EARS):
            continue
        x, y = max(x0 - half, 0), max(y0 - half, 0)
        size_x = width - x if x + half > width else 2 * half
        size_y = height - y if y + half > height else 2 * half
        size = min(size_x, size_y)
        if size >= MIN_BOX:
            boxes.append((int(x), int(y), int(size)))
    return boxes


def face_peaks(heat: np.ndarray) -> np.ndarray:
    """(71, h, w) heat maps -> (n, 2) int (x, y): per channel with any value > 0.05, its first
    (row-major) maximum. Channels without one are left out, so n <= 71; as upstream, the background
    channel (the 71st) is treated like a landmark."""
    peaks = []
    for channel in heat:
        if not (channel > HEAT_THRESHOLD).any():
            continue
        masked = np.where(channel > HEAT_THRESHOLD, channel, -np.inf)
        y, x = np.unravel_index(np.argmax(masked), masked.shape)
        peaks.append((x, y))
    return np.array(peaks, dtype=np.int64).reshape(-1, 2)
