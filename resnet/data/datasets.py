"""Datasets by name: what each one is (DatasetInfo), its splits, its images as tensors, and its training mean.

The paper subtracts "the per-pixel mean" of the training set (sections 3.4 and 4.2): `pixel_mean`
computes it once on the full official training set and caches it as a small safetensors file in
the user's cache folder ($XDG_CACHE_HOME/resnet or ~/.cache/resnet, never the data folder), keyed
on the training files' names, sizes and modification times, so changed images give a new mean.

An image folder (`folder`) picks its protocol from its images' size: up to SMALL_MAX_SIDE pixels,
the CIFAR protocol at the images' native size ("small"); larger, the ImageNet protocol ("imagenet",
224 crops). The options `style` and `image_size` override the choice.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset
from torchvision import tv_tensors

from resnet.atomic import atomic_write
from resnet.data import folder, small
from resnet.data.info import DatasetInfo
from resnet.data.transforms import CIFAR_PAD, PAPER_CROP, _scale_range, default_resize

DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "fashion-mnist", "imagenet", "folder", "synthetic")
SMALL = ("cifar10", "cifar100", "fashion-mnist", "synthetic")
SPLITS = ("train", "val", "test")
VAL_FRACTION = {"cifar10": 10, "cifar100": 10, "fashion-mnist": 12}  # 45k/5k and 55k/5k held-out splits
OPTIONS = {
    "cifar10": set(),
    "cifar100": set(),
    "fashion-mnist": set(),
    "imagenet": {"image_size", "draft", "style"},
    "folder": {"image_size", "draft", "style"},
    "synthetic": {"num_classes", "image_size", "length", "channels"},
}
TREES = ("imagenet", "folder")  # read from image files on access
STYLES = ("auto", "small", "imagenet")
SMALL_MAX_SIDE = 64  # a folder of images up to this size trains at native size with the CIFAR protocol
MEAN_VERSION = "2"


class ImageTensors(Dataset):
    """A split held in memory as uint8 images [N,C,H,W] and int64 labels [N]."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, info: DatasetInfo, transform: Callable | None = None):
        self.images = images
        self.labels = labels
        self.targets = labels.tolist()
        self.info = info
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[object, int]:
        image = tv_tensors.Image(self.images[index])
        return (self.transform(image) if self.transform else image), int(self.labels[index])


class SyntheticImages(Dataset):
    """Random uint8 images, each made on access from (seed, split, index), tinted by a per-class colour so it is learnable."""

    def __init__(self, info: DatasetInfo, length: int, seed: int, split: str, transform: Callable | None = None):
        self.info = info
        self.length = length
        self.transform = transform
        self.seed = seed * 10 + SPLITS.index(split)
        g = torch.Generator().manual_seed(seed)  # class colours are shared by all splits
        self.colours = torch.randint(0, 128, (info.num_classes, info.channels, 1, 1), generator=g, dtype=torch.uint8)
        g = torch.Generator().manual_seed(self.seed)
        self.labels = torch.randint(0, info.num_classes, (length,), generator=g)
        self.targets = self.labels.tolist()

    def __len__(self) -> int:
        return self.length

    def image(self, index: int) -> torch.Tensor:
        """The uint8 [C,S,S] image of sample `index`, the same every time."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        s, c = self.info.image_size, self.info.channels
        noise = torch.randint(0, 128, (c, s, s), generator=g, dtype=torch.uint8)
        return noise + self.colours[self.labels[index]]

    def __getitem__(self, index: int) -> tuple[object, int]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        image = tv_tensors.Image(self.image(index))
        return (self.transform(image) if self.transform else image), int(self.labels[index])


def _check(name: str, split: str, options: dict) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    unknown = set(options) - OPTIONS[name]
    if unknown:
        allowed = ", ".join(sorted(OPTIONS[name])) or "none"
        raise ValueError(f"unknown option(s) {', '.join(sorted(unknown))} for dataset {name} (allowed: {allowed})")


# ---- info -----------------------------------------------------------------------------------


def _synthetic_info(num_classes: int = 10, image_size: int = 32, length: int = 512, channels: int = 3) -> DatasetInfo:
    classes = [str(i) for i in range(num_classes)]
    style = "small" if image_size <= 64 else "imagenet"
    return DatasetInfo("synthetic", classes, classes, channels, image_size, style, None, {"length": length})


def _tree_root(name: str, data_dir: str | Path | None) -> Path:
    """The folder holding train/ and val/ (imagenet also accepts Kaggle's ILSVRC/Data/CLS-LOC inside data_dir)."""
    root = Path(data_dir).expanduser() if data_dir is not None else small.data_home() / name
    kaggle = root / "ILSVRC" / "Data" / "CLS-LOC"
    if name == "imagenet" and not (root / "train").is_dir() and (kaggle / "train").is_dir():
        root = kaggle
    if not (root / "train").is_dir() or not folder.has_class_folders(root / "train"):
        how = (
            "train/<wnid>/*.JPEG and val/ (class folders, or flat with ILSVRC2012_devkit_t12 or LOC_val_solution.csv)"
            if name == "imagenet"
            else "train/<class>/<image> and val/<class>/<image>"
        )
        raise FileNotFoundError(f"{name}: no class folders in {root / 'train'} (expected {how}); pass --data-dir PATH")
    return root


def _median(values: list[int]) -> int:
    return sorted(values)[len(values) // 2]


def choose_style(sizes: list[tuple[int, int]], style: str | None = None, image_size: int | None = None,
                 default: str = "auto") -> tuple[str, int, str]:
    """(style, image_size, reason): the options when given, else from the images' typical (median) size."""
    style = style or default
    if style not in STYLES:
        raise ValueError(f"invalid --style {style!r}; allowed: {', '.join(STYLES)}")
    if image_size is not None and image_size < 1:
        raise ValueError(f"invalid --image-size {image_size}; must be a positive integer")
    longer = _median([max(s) for s in sizes]) if sizes else None
    shorter = _median([min(s) for s in sizes]) if sizes else None
    seen = f"images about {shorter}x{longer} px (median of {len(sizes)} sampled)" if sizes else "no image sizes read"
    reason = f"--style {style}" if style != "auto" else ""
    if style == "auto":
        if image_size is not None:
            style, reason = ("small" if image_size <= SMALL_MAX_SIDE else "imagenet"), f"--image-size {image_size}"
        else:
            style = "small" if longer is not None and longer <= SMALL_MAX_SIDE else "imagenet"
            reason = f"{seen}; small-image protocol up to {SMALL_MAX_SIDE} px"
    if image_size is None:
        image_size = min(shorter or 32, SMALL_MAX_SIDE) if style == "small" else PAPER_CROP
    else:
        reason += f", --image-size {image_size}" if "--image-size" not in reason else ""
    return style, image_size, reason


def _tree_info(name: str, data_dir: str | Path | None, image_size: int | None = None, draft: int | None = None,
               style: str | None = None) -> DatasetInfo:
    root = _tree_root(name, data_dir)
    classes = folder.folder_classes(root / "train")
    names = folder.class_words(root, classes) if name == "imagenet" else classes
    sizes = folder.sample_sizes(root / "train", classes) if name == "folder" else []
    style, image_size, reason = choose_style(sizes, style, image_size, "auto" if name == "folder" else "imagenet")
    return DatasetInfo(name, classes, names, 3, image_size, style, str(root), {"style_from": reason})


def describe_input(info: DatasetInfo, crop_pad: int | None = None) -> str:
    """One line: the protocol a run uses for this data, its input size and why (printed at the start of training);
    `crop_pad` is the run's padding before the random crop (default: the paper's 4)."""
    s = info.image_size
    if info.style == "small":
        pad = CIFAR_PAD if crop_pad is None else crop_pad
        crop = f"pad {pad}, random crop" if pad else "no crop"
        what = (f"small-image protocol at {s}x{s} (images fitted to {s}x{s}, {crop}, flip; "
                f"test: the image itself)")
    else:
        lo, hi = _scale_range(s)
        what = (f"ImageNet protocol with {s}x{s} crops (shorter side in [{lo}, {hi}], flip, colour; "
                f"test: shorter side {default_resize(s)}, centre crop)")
    why = info.extra.get("style_from")
    return f"{what}{f' - from {why}' if why else ''}"


def protocol_options(name: str, style: str = "auto", image_size: int | None = None) -> dict:
    """Dataset options for a run's `--style`/`--image-size`: image trees take both, synthetic the size."""
    if name in TREES:
        return {"style": style, **({"image_size": image_size} if image_size else {})}
    if name == "synthetic" and style == "auto":
        return {"image_size": image_size} if image_size else {}
    if style != "auto" or image_size:
        raise ValueError(f"--style and --image-size apply to folder and imagenet data; {name} has its own size "
                         f"and protocol")
    return {}


def held_out_splits(name: str, val_split: bool) -> dict[str, str]:
    """Evaluation name -> split evaluated during training: a folder's val/ is evaluated once, as "val"."""
    if name in TREES:
        return {"val": "val"}
    return {"val": "val", "test": "test"} if val_split else {"test": "test"}


def dataset_info(name: str, data_dir: str | Path | None = None, *, download: bool = False, **options) -> DatasetInfo:
    """The classes, channels, crop size, augmentation style and root of a dataset, without reading its images."""
    _check(name, "train", options)
    if name == "synthetic":
        return _synthetic_info(**options)
    if name in small.CIFAR:
        root = small.cifar_root(name, data_dir, download)
        classes = small.cifar_classes(root, name)
        return DatasetInfo(name, classes, classes, 3, 32, "small", str(root))
    if name == "fashion-mnist":
        root = small.fashion_mnist_root(data_dir, download)
        classes = small.FASHION_MNIST_CLASSES
        return DatasetInfo(name, list(classes), list(classes), 1, 28, "small", str(root))
    return _tree_info(name, data_dir, **options)


# ---- splits ---------------------------------------------------------------------------------


def _official_split(info: DatasetInfo, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    root = Path(info.root)
    if info.name in small.CIFAR:
        return small.read_cifar(root, info.name, split)
    return small.read_fashion_mnist(root, split)


def held_out(n: int, name: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, val) of the paper's held-out split of n training images, fixed by seed."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = n // VAL_FRACTION[name]
    return order[n_val:].sort().values, order[:n_val].sort().values


def load_tensors(
    name: str,
    split: str = "train",
    data_dir: str | Path | None = None,
    *,
    download: bool = False,
    val_split: bool = False,
    seed: int = 0,
    **options,
) -> tuple[torch.Tensor, torch.Tensor, DatasetInfo]:
    """A small dataset's split as uint8 images [N,C,H,W], int64 labels [N] and its info (for on-device loaders)."""
    _check(name, split, options)
    if name not in SMALL:
        raise ValueError(f"load_tensors holds small datasets in memory ({', '.join(SMALL)}); {name} is read from files")
    info = dataset_info(name, data_dir, download=download, **options)
    if name == "synthetic":
        data = SyntheticImages(info, info.extra["length"], seed, split)
        images = torch.stack([data.image(i) for i in range(len(data))]) if len(data) else torch.empty(0, info.channels, info.image_size, info.image_size, dtype=torch.uint8)
        return images, data.labels.clone(), info
    if split == "test" or (split == "val" and not val_split):
        images, labels = _official_split(info, "test")
        return images, labels, info
    images, labels = _official_split(info, "train")
    if val_split:
        train, val = held_out(len(labels), name, seed)
        keep = train if split == "train" else val
        images, labels = images[keep], labels[keep]
    return images, labels, info


def _tree_samples(info: DatasetInfo, split: str) -> list[tuple[str, int]]:
    root = Path(info.root)
    class_to_idx = {c: i for i, c in enumerate(info.classes)}
    if split == "train":
        return folder.class_folder_samples(root / "train", class_to_idx)
    val = root / "val"
    if not val.is_dir():
        raise FileNotFoundError(f"{info.name}: no {val} (expected val/<class>/<image>, or flat val/ with ground truth)")
    if info.name == "imagenet" and folder.is_flat(val):
        return folder.flat_val_samples(root, val, class_to_idx)
    return folder.held_out_class_samples(val, class_to_idx)


def get_dataset(
    name: str,
    split: str = "train",
    data_dir: str | Path | None = None,
    *,
    transform: Callable | None = None,
    download: bool = False,
    val_split: bool = False,
    seed: int = 0,
    strict: bool = False,
    skip_unreadable: bool = False,
    **options,
) -> Dataset:
    """A split of a dataset by name; items are (image, label), the image a uint8 tv_tensors.Image before `transform`.

    For image trees, `skip_unreadable` makes an unreadable file a `folder.Unreadable` item instead of
    the next readable image (evaluation leaves it out and names it).
    """
    _check(name, split, options)
    if name in SMALL and name != "synthetic":
        images, labels, info = load_tensors(name, split, data_dir, download=download, val_split=val_split, seed=seed)
        return ImageTensors(images, labels, info, transform)
    if name == "synthetic":
        info = _synthetic_info(**options)
        return SyntheticImages(info, info.extra["length"], seed, split, transform)
    draft = options.pop("draft", None)
    info = _tree_info(name, data_dir, **options)
    dataset = folder.ImageTree(_tree_samples(info, split), info, transform, strict=strict, draft=draft,
                               skip_unreadable=skip_unreadable)
    if not dataset.samples:
        raise FileNotFoundError(f"{name}: no images for split {split} under {info.root}")
    return dataset


# ---- per-pixel mean -------------------------------------------------------------------------


def cache_home() -> Path:
    """Where computed means are cached: $XDG_CACHE_HOME/resnet or ~/.cache/resnet (never the data folder)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "resnet"


def _training_files(info: DatasetInfo) -> list[Path]:
    """The files the training split is read from."""
    root = Path(info.root)
    if info.name in small.CIFAR:
        return [root / f for f in small.cifar_files(info.name, "train")]
    if info.name == "fashion-mnist":
        return sorted(p for p in root.iterdir() if p.name.startswith("train-"))
    return [Path(path) for path, _ in _tree_samples(info, "train")]


def _fingerprint(info: DatasetInfo) -> str:
    """A key for the training split's content: every file's path (relative to the root), size and mtime, and
    what the mean is computed for (dataset, style, image size)."""
    root = Path(info.root)
    stats = []
    for path in _training_files(info):
        stat = path.stat()
        stats.append((os.path.relpath(path, root), stat.st_size, stat.st_mtime_ns))
    key = {"dataset": info.name, "split": "train", "style": info.style, "image_size": info.image_size,
           "version": MEAN_VERSION, "files": stats}
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()


def _mean_path(info: DatasetInfo, fingerprint: str) -> Path:
    return cache_home() / f"mean-{info.name}-{fingerprint[:24]}.safetensors"


def _read_cached_mean(path: Path, meta: dict) -> torch.Tensor | None:
    try:
        with safe_open(str(path), "pt") as f:
            if f.metadata() != meta:
                return None
        return load_file(str(path))["mean"]
    except (OSError, SafetensorError, KeyError):
        return None


def _write_cached_mean(path: Path, mean: torch.Tensor, meta: dict) -> None:
    try:
        atomic_write(path, lambda tmp: save_file({"mean": mean.contiguous()}, tmp, metadata=meta))
    except OSError:
        pass  # a cache that cannot be written is recomputed next time


def _compute_mean(name: str, info: DatasetInfo, data_dir, options: dict) -> torch.Tensor:
    if name in TREES:
        dataset = folder.ImageTree(_tree_samples(info, "train"), info)
        if info.style == "small":
            return folder.mean_image(dataset, info.image_size)
        return folder.channel_mean(dataset)
    if info.style == "small":
        images, _, _ = load_tensors(name, "train", data_dir, **options)
        total = torch.zeros(images.shape[1:], dtype=torch.float64)
        for chunk in images.split(4096):
            total += chunk.sum(dim=0, dtype=torch.float64)
        return (total / max(len(images), 1) / 255).float()
    if name == "synthetic":
        data = SyntheticImages(info, info.extra["length"], 0, "train")
        sums = torch.stack([data.image(i).double().mean(dim=(1, 2)) for i in range(min(len(data), 10_000))])
        return (sums.mean(0) / 255).float()[:, None, None]


def pixel_mean(name: str, data_dir: str | Path | None = None, **options) -> torch.Tensor:
    """The training set's mean image on 0..1: [C,H,W] per pixel for small-style data, [C,1,1] per channel for ImageNet style."""
    download = options.pop("download", False)
    for ignored in ("val_split", "seed", "strict"):  # the mean is always that of the full official training set
        options.pop(ignored, None)
    info = dataset_info(name, data_dir, download=download, **options)
    if info.root is None:
        return _compute_mean(name, info, data_dir, options)
    fingerprint = _fingerprint(info)
    meta = {"dataset": name, "style": info.style, "fingerprint": fingerprint, "version": MEAN_VERSION}
    path = _mean_path(info, fingerprint)
    mean = _read_cached_mean(path, meta)
    if mean is None:
        mean = _compute_mean(name, info, data_dir, options)
        _write_cached_mean(path, mean, meta)
    return mean
