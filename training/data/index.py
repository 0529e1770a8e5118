"""An index file listing the samples: JSON lines (``.jsonl``, or Fill50K's ``prompt.json``) or CSV with a header.

Fields (paths relative to the index's folder): ``image`` (also ``target``, ``file_name``), ``caption`` (also
``text``, ``prompt``) and optionally ``condition`` (also ``source``, ``conditioning_image``, ``hint``); Fill50K's
``{"source", "target", "prompt"}`` and diffusers' ControlNet ``{"image", "text", "conditioning_image"}`` names work
as they are.
"""
import csv
import json
import os
from typing import Iterator, List, Optional, Tuple

from training.data.samples import Blob, Listing, Record
from training.dataset import DatasetError

IMAGE_KEYS = ("image", "target", "file_name")
CAPTION_KEYS = ("caption", "text", "prompt")
CONDITION_KEYS = ("condition", "source", "conditioning_image", "hint")


def _first(row: dict, keys) -> Tuple[Optional[str], Optional[object]]:
    for key in keys:
        if key in row and row[key] not in (None, ""):
            return key, row[key]
    return None, None


def _rows(path: str) -> Iterator[Tuple[int, object, str]]:
    """(line number, parsed row or an error message, raw line)."""
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        if path.lower().endswith(".csv"):
            reader = csv.DictReader(f)
            if not reader.fieldnames:
                return
            for row in reader:
                yield reader.line_num, dict(row), ""
            return
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line), line
            except json.JSONDecodeError as e:
                yield number, f"not valid JSON ({e.msg}, column {e.colno})", line


def list_index(path: str, skip_bad: bool = False) -> Listing:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"index not found: {path}")
    root = os.path.dirname(os.path.abspath(path))
    listing = Listing([], origin=path)
    bad: List[str] = []
    for number, row, line in _rows(path):
        problem = None
        if isinstance(row, str):
            problem = row
        elif not isinstance(row, dict):
            problem = f"expected an object, got {line.strip()[:80]!r}"
        else:
            _, image = _first(row, IMAGE_KEYS)
            caption_key, caption = _first(row, CAPTION_KEYS)
            _, condition = _first(row, CONDITION_KEYS)
            if not isinstance(image, str):
                problem = f"no image field ({' / '.join(IMAGE_KEYS)})"
            elif caption_key is None and not any(k in row for k in CAPTION_KEYS):
                problem = f"no caption field ({' / '.join(CAPTION_KEYS)})"
            elif caption is not None and not isinstance(caption, str):
                problem = f"the caption is not text: {caption!r}"
            else:
                image_path = os.path.join(root, image)
                condition_path = os.path.join(root, condition) if isinstance(condition, str) else None
                if not os.path.isfile(image_path):
                    problem = f"image not found: {image_path}"
                elif condition_path and not os.path.isfile(condition_path):
                    problem = f"condition not found: {condition_path}"
                else:
                    listing.records.append(Record(Blob(image_path), caption or "",
                                                  Blob(condition_path) if condition_path else None))
        if problem:
            bad.append(f"{path}, line {number}: {problem}")
    if bad and not skip_bad:
        more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
        raise DatasetError(f"{len(bad)} bad entries: " + "; ".join(bad[:3]) + more + " (or pass --skip-bad-samples)")
    listing.skipped += bad
    if not listing.records and not bad:
        raise DatasetError(f"{path} lists no samples")
    return listing
