"""Pick the data source from ``--data-root`` (or ``--data-format``) and build the training data set."""
import argparse
import logging
import os

from training.data.conditions import Annotate
from training.data.folder import list_folder
from training.data.index import list_index
from training.data.samples import Listing, RecordDataset
from training.data.shards import list_shards
from training.dataset import PromptDataset

log = logging.getLogger(__name__)

FORMATS = ("auto", "fill50k", "folder", "index", "shards")


def detect_format(path: str) -> str:
    lower = path.lower()
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "prompt.json")):
            return "fill50k"
        if any(name.endswith(".tar") for name in os.listdir(path)):
            return "shards"
        return "folder"
    if lower.endswith(".tar") or "*" in path or ("{" in path and ".." in path):
        return "shards"
    if lower.endswith((".jsonl", ".json", ".csv")):
        return "index"
    raise FileNotFoundError(f"--data-root {path}: not a folder, an index (.jsonl/.json/.csv) or tar shards (.tar); "
                            "generate Fill50K with: python -m training.fill50k --out ./training/fill50k/")


def list_source(path: str, fmt: str, skip_bad: bool) -> Listing:
    if fmt == "fill50k":
        return list_index(os.path.join(path, "prompt.json"), skip_bad)
    if fmt == "index":
        return list_index(path, skip_bad)
    if fmt == "shards":
        return list_shards(path, skip_bad)
    return list_folder(path, skip_bad)


def uses_new_options(args: argparse.Namespace) -> bool:
    return bool(args.resolution or args.flip or args.random_crop or args.condition or args.skip_bad_samples
                or args.buckets)


def build_dataset(args: argparse.Namespace):
    """The data set of ``args``; Fill50K's layout without any data option keeps ``PromptDataset`` as before."""
    fmt = detect_format(args.data_root) if args.data_format == "auto" else args.data_format
    if fmt == "fill50k" and not uses_new_options(args):
        return PromptDataset(args.data_root, prompt_dropout=args.prompt_dropout)
    if args.buckets and not args.resolution:
        raise ValueError("--buckets needs --resolution (the bucket area is about resolution^2 pixels)")
    listing = list_source(args.data_root, fmt, args.skip_bad_samples)
    annotate = Annotate(args.condition, args.annotator_ckpts) if args.condition else None
    dataset = RecordDataset(listing, resolution=args.resolution, buckets=args.buckets, random_crop=args.random_crop,
                            flip=args.flip, prompt_dropout=args.prompt_dropout, annotate=annotate,
                            skip_bad=args.skip_bad_samples)
    log.info("data: %d samples from %s (%s)%s", len(dataset), args.data_root, fmt,
             f", buckets {dataset.bucket_counts()}" if args.buckets else "")
    if dataset.skipped_listing:
        log.warning("skipped %d bad samples of %s, e.g. %s", len(dataset.skipped_listing), args.data_root,
                    "; ".join(dataset.skipped_listing[:3]))
    return dataset
