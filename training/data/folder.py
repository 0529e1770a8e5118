"""A folder of files: ``NAME.png`` (or .jpg, .webp, ...) images with ``NAME.txt`` captions beside them, and the
conditions as ``conditions/NAME.<any image extension>``. Images may also sit in an ``images/`` subfolder and
captions in ``captions/``. Without a ``conditions/`` folder, compute them with ``--condition NAME``."""
import os
from typing import Dict, Optional

from training.data.samples import IMAGE_EXTENSIONS, Blob, Listing, Record
from training.dataset import DatasetError


def _by_stem(folder: str, extensions) -> Dict[str, str]:
    if not os.path.isdir(folder):
        return {}
    out = {}
    for name in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(name)
        if ext.lower() in extensions and os.path.isfile(os.path.join(folder, name)):
            out.setdefault(stem, os.path.join(folder, name))
    return out


def _read_caption(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: caption is not UTF-8 text ({e})") from e


def list_folder(root: str, skip_bad: bool = False, conditions: Optional[str] = None) -> Listing:
    image_dir = os.path.join(root, "images") if os.path.isdir(os.path.join(root, "images")) else root
    caption_dir = os.path.join(root, "captions") if os.path.isdir(os.path.join(root, "captions")) else image_dir
    condition_dir = conditions or os.path.join(root, "conditions")
    images = _by_stem(image_dir, IMAGE_EXTENSIONS)
    if not images:
        raise DatasetError(f"{image_dir} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    captions = _by_stem(caption_dir, (".txt",))
    stored = _by_stem(condition_dir, IMAGE_EXTENSIONS)
    listing = Listing([], origin=root)
    for stem, path in images.items():
        problem = None
        if stem not in captions:
            problem = f"{path}: no caption {os.path.join(caption_dir, stem + '.txt')}"
        elif stored and stem not in stored:
            problem = f"{path}: no condition {os.path.join(condition_dir, stem)}.* (the folder has some)"
        if problem:
            if not skip_bad:
                raise DatasetError(problem + " (or pass --skip-bad-samples)")
            listing.skipped.append(problem)
            continue
        condition = Blob(stored[stem]) if stem in stored else None
        listing.records.append(Record(Blob(path), _read_caption(captions[stem]), condition))
    return listing
