"""Datasets (cifar10/100, fashion-mnist, imagenet, folder, synthetic), the paper's transforms, and loaders."""

from resnet.data.datasets import (
    DATASETS,
    DatasetInfo,
    dataset_info,
    get_dataset,
    load_tensors,
    pixel_mean,
)
from resnet.data.small import DownloadError

__all__ = ["DATASETS", "DatasetInfo", "DownloadError", "dataset_info", "get_dataset", "load_tensors", "pixel_mean"]
