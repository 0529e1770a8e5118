"""Records (where a sample's image, condition and caption are) and the data set that turns them into training
items ``{'jpg': (H, W, 3) float32 in [-1, 1], 'txt': caption, 'hint': (H, W, 3) float32 in [0, 1]}``.

A source (folder, index, shards) lists records; ``RecordDataset`` reads, checks, conditions and augments them.
Bad data raises ``DatasetError`` naming the file, or, with ``skip_bad``, is left out and counted (found while
listing) or replaced by the next good sample and logged with its name (found while reading); never a silent bad
batch.
"""
import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from training.data.buckets import Bucket, crop_box, fit, make_buckets, nearest_bucket
from training.dataset import DatasetError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class Blob(NamedTuple):
    """Bytes of a file (``offset`` -1) or of a member of a tar shard (``offset``/``size`` of its data)."""
    path: str
    offset: int = -1
    size: int = -1
    member: str = ""

    @property
    def name(self) -> str:
        return f"{self.path}:{self.member}" if self.member else self.path

    def read(self, limit: int = -1) -> bytes:
        with open(self.path, "rb") as f:
            if self.offset < 0:
                return f.read(limit)
            f.seek(self.offset)
            return f.read(self.size if limit < 0 else min(limit, self.size))


@dataclass
class Record:
    image: Blob
    caption: str
    condition: Optional[Blob] = None
    size: Optional[Tuple[int, int]] = None  # (width, height), filled in for buckets


@dataclass
class Listing:
    """A source's records and what it left out (with --skip-bad-samples): 'file: reason' lines."""
    records: List[Record]
    skipped: List[str] = field(default_factory=list)
    origin: str = ""


def decode_rgb(blob: Blob) -> np.ndarray:
    """(H, W, 3) uint8 RGB; ``DatasetError`` naming the file if it cannot be read or decoded."""
    try:
        data = np.frombuffer(blob.read(), np.uint8)
    except OSError as e:
        raise DatasetError(f"cannot read {blob.name}: {e}") from e
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise DatasetError(f"cannot decode image {blob.name}: the file is corrupt or not an image")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def image_size(blob: Blob) -> Tuple[int, int]:
    """(width, height) from the image header (Pillow reads only the start of the file)."""
    from io import BytesIO

    from PIL import Image, UnidentifiedImageError
    for limit in (1 << 16, -1):
        try:
            with Image.open(BytesIO(blob.read(limit))) as im:
                return im.size
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            error = e
    raise DatasetError(f"cannot read the size of image {blob.name}: {error}")


class RecordDataset(Dataset):
    """Training items from records.

    ``resolution`` 0 keeps each image's own size (upstream's Fill50K behaviour); otherwise the image goes into a
    bucket (``buckets``: aspect-ratio buckets of about ``resolution**2`` pixels; else the square) by scaling and
    a centre or random crop. ``flip`` mirrors image and condition together with probability 0.5. ``annotate``
    computes the condition from the final image (after crop and flip) when a record has none stored.
    """

    def __init__(self, listing: Listing, resolution: int = 0, buckets: bool = False, random_crop: bool = False,
                 flip: bool = False, prompt_dropout: float = 0.0,
                 annotate: Optional[Callable[[np.ndarray], np.ndarray]] = None, skip_bad: bool = False):
        if not 0.0 <= prompt_dropout <= 1.0:
            raise ValueError(f"prompt_dropout must be in [0, 1], got {prompt_dropout}")
        self.records, self.origin = listing.records, listing.origin
        self.skipped_listing = list(listing.skipped)
        self.resolution, self.random_crop, self.flip = resolution, random_crop, flip
        self.prompt_dropout, self.annotate, self.skip_bad = prompt_dropout, annotate, skip_bad
        self.skipped_reading = 0  # in this process
        missing = [r.image.name for r in self.records if r.condition is None]
        if missing and annotate is None:
            raise DatasetError(f"{len(missing)} samples of {self.origin} have no stored condition (first: {missing[0]}); "
                               "store one per image or compute it with --condition NAME (e.g. canny)")
        self.buckets: Optional[List[Bucket]] = None
        if resolution:
            self.buckets = make_buckets(resolution) if buckets else [(resolution, resolution)]
            if buckets:
                self._measure()
        if not self.records:
            raise DatasetError(f"{self.origin}: no usable samples" + (
                f" ({len(self.skipped_listing)} skipped as bad)" if self.skipped_listing else ""))

    def _measure(self) -> None:
        kept = []
        for record in self.records:
            if record.size is None:
                try:
                    record.size = image_size(record.image)
                except DatasetError as e:
                    if not self.skip_bad:
                        raise
                    self.skipped_listing.append(str(e))
                    continue
            kept.append(record)
        self.records = kept

    def __len__(self) -> int:
        return len(self.records)

    def bucket_of(self, index: int) -> Optional[Bucket]:
        if self.buckets is None:
            return None
        if len(self.buckets) == 1:
            return self.buckets[0]
        return nearest_bucket(*self.records[index].size, self.buckets)

    def groups(self) -> Optional[List[Bucket]]:
        """Each item's bucket, so a batch has one shape (None: all one group)."""
        return None if self.buckets is None else [self.bucket_of(i) for i in range(len(self))]

    def bucket_counts(self) -> Dict[Bucket, int]:
        counts: Dict[Bucket, int] = {}
        for g in self.groups() or []:
            counts[g] = counts.get(g, 0) + 1
        return counts

    def load(self, index: int) -> Dict[str, object]:
        record = self.records[index]
        image = decode_rgb(record.image)
        condition = decode_rgb(record.condition) if record.condition is not None else None
        if condition is not None and condition.shape != image.shape:
            raise DatasetError(f"{record.image.name} is {image.shape[1]}x{image.shape[0]} but its condition "
                               f"{record.condition.name} is {condition.shape[1]}x{condition.shape[0]}: a sample's two "
                               "images must have one size")
        bucket = self.bucket_of(index)
        if bucket is not None:
            # numpy's generator, seeded from torch's: SeededItems fixes torch's per (seed, epoch, index).
            rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
            scale, box = crop_box(image.shape[1], image.shape[0], bucket, self.random_crop, rng)
            image = fit(image, bucket, scale, box)
            if condition is not None:
                condition = fit(condition, bucket, scale, box, nearest=True)
        if self.flip and torch.rand(()).item() < 0.5:
            image = np.ascontiguousarray(image[:, ::-1])
            if condition is not None:
                condition = np.ascontiguousarray(condition[:, ::-1])
        if condition is None:
            condition = self.annotate(image)
        caption = record.caption
        if self.prompt_dropout > 0 and torch.rand(()).item() < self.prompt_dropout:
            caption = ""
        return {"jpg": image.astype(np.float32) / 127.5 - 1.0, "txt": caption,
                "hint": condition.astype(np.float32) / 255.0}

    def __getitem__(self, index: int) -> Dict[str, object]:
        if not self.skip_bad:
            return self.load(index)
        # Replace a bad sample by the next good one of the same bucket, so the batch keeps one shape.
        bucket = self.bucket_of(index)
        for step in range(len(self)):
            j = (index + step) % len(self)
            if self.bucket_of(j) != bucket:
                continue
            try:
                return self.load(j)
            except DatasetError as e:
                self.skipped_reading += 1
                log.warning("skipped bad sample (%d so far in process %d): %s", self.skipped_reading, os.getpid(), e)
        raise DatasetError(f"{self.origin}: every sample of bucket {bucket} is bad")
