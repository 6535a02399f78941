"""The data pipeline: the built-in dataset, ImageFolder loading, prepared data (256 px JPEG
shards, :mod:`~fastalex.training.data.shards`), training-set statistics and the paper's
transforms."""

from fastalex.training.data.builtin import CLASSES, default_cache_dir, ensure_builtin_dataset
from fastalex.training.data.datasets import (
    CorruptImageWarning,
    DataError,
    EncodedImageFolder,
    SafeImageFolder,
    build_datasets,
    collate_encoded,
    collate_skip_none,
    decode_images,
    load_split,
)
from fastalex.training.data.shards import PreparedImages, ShardSampler, is_prepared
from fastalex.training.data.stats import ImageStats, load_or_compute_stats
from fastalex.training.data.transforms import (
    BatchTrainTransform,
    PCALighting,
    SubtractMean,
    ToFloat255,
    eval_transform,
    train_transform,
)

__all__ = [
    "CLASSES",
    "BatchTrainTransform",
    "CorruptImageWarning",
    "DataError",
    "EncodedImageFolder",
    "ImageStats",
    "PCALighting",
    "PreparedImages",
    "SafeImageFolder",
    "ShardSampler",
    "SubtractMean",
    "ToFloat255",
    "build_datasets",
    "collate_encoded",
    "collate_skip_none",
    "decode_images",
    "default_cache_dir",
    "ensure_builtin_dataset",
    "eval_transform",
    "is_prepared",
    "load_or_compute_stats",
    "load_split",
    "train_transform",
]
