"""Body pose from OpenPose maps: part peaks, limb scoring along PAFs, greedy assembly into people.

Reproduces upstream `annotator/openpose/body.py` (Cao et al., "Realtime Multi-Person 2D Pose Estimation
using Part Affinity Fields", CVPR 2017), vectorised over candidate pairs. Outputs use upstream's layout:
candidate (n, 4) = x, y, score, id; subset (people, 20) = 18 candidate ids (-1 = absent), total score,
part count.
"""
import numpy as np

from annotator.openpose.maps import gaussian_smooth

N_PARTS = 18  # COCO: nose, neck, r-shoulder, r-elbow, r-wrist, l-shoulder, ..., r-ear, l-ear
# 19 limbs (part a, part b) and their PAF (x, y) channels; the last two (ear-shoulder) only join people.
LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
         (1, 0), (0, 14), (14, 16), (0, 15), (15, 17), (2, 16), (5, 17))
LIMB_PAFS = ((12, 13), (20, 21), (14, 15), (16, 17), (22, 23), (24, 25), (0, 1), (2, 3), (4, 5), (6, 7), (8, 9),
             (10, 11), (28, 29), (30, 31), (34, 35), (32, 33), (36, 37), (18, 19), (26, 27))
N_SKELETON_LIMBS = 17  # limbs that may start a person (and that are drawn)
PEAK_THRESHOLD = 0.1
PAF_THRESHOLD = 0.05
PAF_SAMPLES = 10
MIN_SAMPLES_ABOVE = 0.8 * PAF_SAMPLES
MIN_PARTS = 4
MIN_MEAN_SCORE = 0.4


def find_peaks(heat: np.ndarray) -> list:
    """(H, W, >=18) float64 heat maps -> per part an (n, 4) array of x, y, raw score, global id.

    A peak is >= its 4 neighbours (zero outside the image) in the smoothed map and above 0.1 there;
    ids run over parts in order, peaks in row-major order.
    """
    smooth = gaussian_smooth(np.ascontiguousarray(heat[:, :, :N_PARTS]))
    padded = np.pad(smooth, ((1, 1), (1, 1), (0, 0)))
    is_peak = ((smooth >= padded[:-2, 1:-1]) & (smooth >= padded[2:, 1:-1]) & (smooth >= padded[1:-1, :-2])
               & (smooth >= padded[1:-1, 2:]) & (smooth > PEAK_THRESHOLD))
    peaks, next_id = [], 0
    for part in range(N_PARTS):
        ys, xs = np.nonzero(is_peak[:, :, part])
        ids = np.arange(next_id, next_id + len(xs))
        peaks.append(np.stack([xs, ys, heat[ys, xs, part], ids], axis=1).astype(np.float64))
        next_id += len(xs)
    return peaks


def connect_limb(cand_a: np.ndarray, cand_b: np.ndarray, paf: np.ndarray, channels, image_height: int) -> np.ndarray:
    """Score every (a, b) peak pair along a limb's PAF (channels (x, y) of paf (h, w, 38)); greedily keep
    the best disjoint pairs.

    Returns (m, 5) rows of id_a, id_b, score, index in cand_a, index in cand_b. The score is the mean of
    PAF . unit vector over 10 points (rounded to pixels) plus a penalty for limbs longer than half the
    image height; a pair needs a positive score and more than 80% of the points above 0.05.
    """
    start, end = cand_a[:, None, :2], cand_b[None, :, :2]  # (nA, 1, 2), (1, nB, 2)
    vec = end - start
    norm = np.maximum(np.sqrt(vec[..., 0] * vec[..., 0] + vec[..., 1] * vec[..., 1]), 0.001)  # (nA, nB)
    unit = vec / norm[..., None]
    # Sample points; endpoints are integers, so fractions are multiples of 1/9 and rounding is never a tie.
    t = np.linspace(0.0, 1.0, PAF_SAMPLES)[:, None]
    points = np.rint(start[:, :, None] + vec[:, :, None] * t).astype(np.int64)  # (nA, nB, 10, 2)
    along_x = paf[points[..., 1], points[..., 0], channels[0]]  # (nA, nB, 10)
    along_y = paf[points[..., 1], points[..., 0], channels[1]]
    sample_scores = along_x * unit[..., None, 0] + along_y * unit[..., None, 1]
    total = sample_scores[..., 0]
    for i in range(1, PAF_SAMPLES):  # left-to-right sum, as upstream's Python sum() (not pairwise)
        total = total + sample_scores[..., i]
    score = total / PAF_SAMPLES + np.minimum(0.5 * image_height / norm - 1, 0)
    valid = ((sample_scores > PAF_THRESHOLD).sum(axis=-1) > MIN_SAMPLES_ABOVE) & (score > 0)

    ia, ib = np.nonzero(valid)  # row-major: the order upstream builds its candidate list in
    order = np.argsort(-score[ia, ib], kind="stable")
    rows, used_a, used_b = [], set(), set()
    for i, j in zip(ia[order], ib[order]):
        if i in used_a or j in used_b:
            continue
        rows.append([cand_a[i, 3], cand_b[j, 3], score[i, j], i, j])
        used_a.add(i)
        used_b.add(j)
        if len(rows) >= min(len(cand_a), len(cand_b)):
            break
    return np.array(rows, dtype=np.float64).reshape(-1, 5)


def assemble_people(connections: list, candidate: np.ndarray) -> np.ndarray:
    """Join limb connections sharing a part into people; drop those with < 4 parts or mean score < 0.4."""
    people = np.zeros((0, N_PARTS + 2))
    for k, connection in enumerate(connections):
        a, b = LIMBS[k]
        for id_a, id_b, limb_score, _, _ in connection:
            # Upstream records at most two owners (a third would crash it); the first two are used here.
            owners = [p for p in range(len(people)) if people[p, a] == id_a or people[p, b] == id_b][:2]
            if len(owners) == 1:
                person = people[owners[0]]
                if person[b] != id_b:
                    _add_part(person, b, id_b, candidate[int(id_b), 2] + limb_score)
            elif len(owners) == 2 and _share_a_slot(people[owners[0]], people[owners[1]]):
                _add_part(people[owners[0]], b, id_b, candidate[int(id_b), 2] + limb_score)
            elif len(owners) == 2:  # two disjoint partial people joined by this limb: merge the second in
                p1, p2 = owners
                people[p1, :-2] += people[p2, :-2] + 1  # -1 + id + 1 = id where only p2 has the part
                people[p1, -2:] += people[p2, -2:]
                people[p1, -2] += limb_score
                people = np.delete(people, p2, axis=0)
            elif k < N_SKELETON_LIMBS:
                row = -np.ones(N_PARTS + 2)
                row[a], row[b], row[-1] = id_a, id_b, 2
                row[-2] = candidate[int(id_a), 2] + candidate[int(id_b), 2] + limb_score
                people = np.vstack([people, row])
    keep = (people[:, -1] >= MIN_PARTS) & (people[:, -2] / people[:, -1] >= MIN_MEAN_SCORE)
    return people[keep]


def _add_part(person: np.ndarray, part: int, part_id: float, score: float) -> None:
    person[part] = part_id
    person[-1] += 1
    person[-2] += score


def _share_a_slot(person1: np.ndarray, person2: np.ndarray) -> bool:
    """Whether two people rows both have some part (then they are not merged)."""
    return bool(((person1[:-2] >= 0) & (person2[:-2] >= 0)).any())


def estimate_body(heat: np.ndarray, paf: np.ndarray, image_height: int):
    """Heat maps (H, W, 19) and PAFs (H, W, 38), float64 -> (candidate (n, 4), subset (people, 20))."""
    peaks = find_peaks(heat)
    connections = []
    for (a, b), channels in zip(LIMBS, LIMB_PAFS):
        if len(peaks[a]) and len(peaks[b]):
            connections.append(connect_limb(peaks[a], peaks[b], paf, channels, image_height))
        else:
            connections.append(np.zeros((0, 5)))
    candidate = np.concatenate(peaks, axis=0)
    return candidate, assemble_people(connections, candidate)

