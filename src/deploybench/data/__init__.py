"""The data layer: datasets, splits, transform presets and calibration subsets."""

from deploybench.data.datasets import (
    DATASET_NAMES,
    DatasetInfo,
    Splits,
    calibration_subset,
    canonical_dataset,
    data_digest,
    data_keys,
    dataset_info,
    load_splits,
)
from deploybench.data.fashion_mnist import DEBIAN_DIR, prepare_fashion_mnist
from deploybench.data.presets import eval_transform, train_transform

__all__ = [
    "DATASET_NAMES",
    "DEBIAN_DIR",
    "DatasetInfo",
    "Splits",
    "calibration_subset",
    "canonical_dataset",
    "data_digest",
    "data_keys",
    "dataset_info",
    "eval_transform",
    "load_splits",
    "prepare_fashion_mnist",
    "train_transform",
]
