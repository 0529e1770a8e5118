"""WebDataset-layout tar shards: each sample is the tar members sharing a key (the name up to its first dot), e.g.
``000042.jpg`` (image), ``000042.txt`` (caption) and, if stored, ``000042.hint.png`` (condition; also
``.cond.*``, ``.condition.*``, ``.conditioning_image.*``, ``.source.*``).

Read with the standard ``tarfile`` module rather than the ``webdataset`` package: listing a shard reads only its
headers and records each member's offset, so a sample is read by one seek, in any order. That gives what a pure
stream cannot: aspect-ratio buckets (sizes known up front), exact resume in the middle of an epoch, and the same
resumable sampler as the other sources. The shards are listed one after another; reading needs local (or
network-mounted) files, not HTTP URLs.
"""
import glob
import os
import tarfile
from typing import Dict, List

from training.data.samples import IMAGE_EXTENSIONS, Blob, Listing, Record
from training.dataset import DatasetError

CONDITION_TAGS = ("hint", "cond", "condition", "conditioning_image", "source")


def shard_paths(spec: str) -> List[str]:
    """A shard, a folder of ``*.tar``, a glob (``data/train-*.tar``) or a brace range (``train-{000..009}.tar``)."""
    if os.path.isdir(spec):
        paths = sorted(glob.glob(os.path.join(spec, "*.tar")))
    elif "{" in spec and ".." in spec:
        head, rest = spec.split("{", 1)
        span, tail = rest.split("}", 1)
        first, last = span.split("..")
        paths = [f"{head}{i:0{len(first)}d}{tail}" for i in range(int(first), int(last) + 1)]
    else:
        paths = sorted(glob.glob(spec)) if any(c in spec for c in "*?[") else [spec]
    if not paths:
        raise DatasetError(f"no tar shards match {spec}")
    return paths


def _split(name: str):
    base = os.path.basename(name)
    key, _, ext = base.partition(".")
    return os.path.join(os.path.dirname(name), key), ext.lower()


def list_shard(path: str) -> Dict[str, Dict[str, Blob]]:
    """key -> {extension: blob} of one shard (headers only)."""
    samples: Dict[str, Dict[str, Blob]] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, ext = _split(member.name)
                samples.setdefault(key, {})[ext] = Blob(path, member.offset_data, member.size, member.name)
    except (tarfile.TarError, OSError) as e:
        raise DatasetError(f"cannot read tar shard {path}: {e}") from e
    return samples


def list_shards(spec: str, skip_bad: bool = False) -> Listing:
    listing = Listing([], origin=spec)
    for path in shard_paths(spec):
        problems = []
        if not os.path.isfile(path):
            problems.append(f"{path}: shard not found")
            samples = {}
        else:
            try:
                samples = list_shard(path)
            except DatasetError as e:
                problems.append(str(e))
                samples = {}
            if not samples and not problems:
                problems.append(f"{path}: empty shard (no files in it)")
        for key, parts in samples.items():
            images = [e for e in parts if e in tuple(x[1:] for x in IMAGE_EXTENSIONS)]
            conditions = [e for e in parts if e.split(".")[0] in CONDITION_TAGS and "." in e]
            if not images:
                problems.append(f"{path}:{key}: no image ({', '.join(sorted(parts))})")
            elif "txt" not in parts:
                problems.append(f"{path}:{key}: no caption ({key}.txt)")
            else:
                caption = parts["txt"].read().decode("utf-8", errors="replace").strip()
                listing.records.append(Record(parts[images[0]], caption,
                                              parts[conditions[0]] if conditions else None))
        if problems and not skip_bad:
            raise DatasetError("; ".join(problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else "")
                               + " (or pass --skip-bad-samples)")
        listing.skipped += problems
    return listing
