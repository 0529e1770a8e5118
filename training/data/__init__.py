"""Training data: sources (a Fill50K-layout folder, a folder of files, a JSONL/CSV index, tar shards), samples,
aspect-ratio buckets, and the resumable loader."""
