"""Readers for the small datasets held in memory: CIFAR-10/100 (python pickle batches) and Fashion-MNIST (IDX).

Downloads go through torchvision's code (URLs, mirrors, md5 checks); reading is done here so the
files can come from anywhere (Debian's package, a test, a hand copy) and so that a CIFAR pickle can
only ever build dicts, lists, strings and numpy arrays, never run code.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import urllib.error
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import CIFAR10, CIFAR100, FashionMNIST
from torchvision.datasets.utils import download_and_extract_archive

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
CIFAR = {"cifar10": CIFAR10, "cifar100": CIFAR100}
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class DownloadError(ConnectionError):
    """A dataset download failed (no network, bad mirror); the message says how to place the files by hand."""


def data_home() -> Path:
    """Where datasets live by default: $RESNET_DATA, else ~/.cache/resnet."""
    return Path(os.environ.get("RESNET_DATA") or Path.home() / ".cache" / "resnet").expanduser()


def _download(what: str, target: Path, fetch) -> None:
    """Run fetch(); turn any network failure into one DownloadError line saying where to put the files instead."""
    try:
        fetch()
    except (urllib.error.URLError, OSError, RuntimeError) as error:
        reason = getattr(error, "reason", None) or str(error).strip().splitlines()[0]
        raise DownloadError(f"downloading {what} into {target} failed ({reason}); download it elsewhere and place the files there by hand") from None


# ---- CIFAR -----------------------------------------------------------------------------------

_multiarray = getattr(np, "_core", None) or np.core
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _multiarray.multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray.multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): _multiarray.multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): _multiarray.multiarray.scalar,
    ("numpy.core.numeric", "_frombuffer"): _multiarray.numeric._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _multiarray.numeric._frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): __import__("codecs").encode,
}


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that only builds plain containers and numpy arrays (what CIFAR batches hold)."""

    def find_class(self, module: str, name: str):
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch") from None


def read_cifar_batch(path: Path) -> dict:
    """One CIFAR python batch (or meta) file as a dict with str keys, read without running pickled code."""
    try:
        return _ArrayUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
        raise ValueError(f"{path} is not a CIFAR python batch: {error}") from None


def cifar_files(name: str, split: str) -> list[str]:
    """The batch file names torchvision's CIFAR class lists for the train or test split."""
    cls = CIFAR[name]
    return [f for f, _ in (cls.train_list if split == "train" else cls.test_list)]


def _cifar_complete(folder: Path, name: str) -> bool:
    needed = cifar_files(name, "train") + cifar_files(name, "test") + [CIFAR[name].meta["filename"]]
    return all((folder / f).is_file() for f in needed)


def cifar_root(name: str, data_dir: str | Path | None, download: bool) -> Path:
    """The cifar-10-batches-py (or cifar-100-python) folder: data_dir itself or inside it; downloaded if allowed."""
    cls = CIFAR[name]
    base = Path(data_dir).expanduser() if data_dir is not None else data_home() / name
    for folder in (base, base / cls.base_folder):
        if _cifar_complete(folder, name):
            return folder
    if download:
        _download(
            cls.filename,
            base,
            lambda: download_and_extract_archive(cls.url, str(base), filename=cls.filename, md5=cls.tgz_md5),
        )
        return base / cls.base_folder
    expected = ", ".join(cifar_files(name, "train") + cifar_files(name, "test") + [cls.meta["filename"]])
    raise FileNotFoundError(
        f"{name}: no complete {cls.base_folder}/ in {base} (expected {expected}); "
        f"pass --download (download=True) to fetch {cls.filename}, or extract it there"
    )


def cifar_classes(folder: Path, name: str) -> list[str]:
    """Class names from batches.meta (label_names) or meta (fine_label_names)."""
    meta = CIFAR[name].meta
    return list(read_cifar_batch(folder / meta["filename"])[meta["key"]])


def read_cifar(folder: Path, name: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of a split as uint8 [N,3,32,32] and labels int64 [N]."""
    images, labels = [], []
    num_classes = 10 if name == "cifar10" else 100
    for f in cifar_files(name, split):
        batch = read_cifar_batch(folder / f)
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        batch_labels = batch["labels"] if "labels" in batch else batch["fine_labels"]
        check_labels(np.asarray(batch_labels, dtype=np.int64), num_classes, folder / f)
        labels.extend(batch_labels)
    return torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.int64)


def check_labels(labels: np.ndarray, num_classes: int, path: Path) -> None:
    """One line naming the file when a label is outside 0..num_classes-1 (rather than an IndexError later)."""
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{path}: label {int(labels[first])} at position {first} is outside the "
                         f"{num_classes} classes (0 to {num_classes - 1})")


# ---- Fashion-MNIST -----------------------------------------------------------------------------


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or raw) of unsigned bytes as a numpy array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as error:
        raise ValueError(f"cannot read IDX file {path}: {error}") from None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: {array.size} bytes of data for shape {shape}")
    return array.reshape(shape)


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _fashion_complete(folder: Path) -> bool:
    return all(_idx_file(folder, stem) for pair in FASHION_FILES.values() for stem in pair)


def fashion_mnist_candidates(data_dir: str | Path | None) -> list[Path]:
    """Folders that may hold the IDX files: data_dir (or $RESNET_DATA / ~/.cache/resnet) then Debian's package."""
    bases = [Path(data_dir).expanduser()] if data_dir is not None else [data_home() / "fashion-mnist", DEBIAN_FASHION_MNIST]
    return [folder for base in bases for folder in (base, base / "FashionMNIST" / "raw", base / "raw")]


def fashion_mnist_root(data_dir: str | Path | None, download: bool) -> Path:
    """The folder holding the four Fashion-MNIST IDX files (gz or raw); downloaded through torchvision if allowed."""
    for folder in fashion_mnist_candidates(data_dir):
        if _fashion_complete(folder):
            return folder
    base = Path(data_dir).expanduser() if data_dir is not None else data_home() / "fashion-mnist"
    if download:
        _download("Fashion-MNIST", base, lambda: FashionMNIST(str(base), download=True))
        return base / "FashionMNIST" / "raw"
    where = base if data_dir is not None else f"{base} or {DEBIAN_FASHION_MNIST}"
    expected = ", ".join(f"{s}[.gz]" for pair in FASHION_FILES.values() for s in pair)
    raise FileNotFoundError(
        f"fashion-mnist: no IDX files in {where} (expected {expected}); pass --download (download=True), "
        f"or apt-get install dataset-fashion-mnist"
    )


def read_fashion_mnist(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of a split as uint8 [N,1,28,28] and labels int64 [N]."""
    image_stem, label_stem = FASHION_FILES[split]
    images = read_idx(_idx_file(folder, image_stem))
    labels = read_idx(_idx_file(folder, label_stem))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{folder}: {image_stem} {images.shape} and {label_stem} {labels.shape} do not match")
    check_labels(labels, len(FashionMNIST.classes), _idx_file(folder, label_stem))
    return torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels.astype(np.int64))


FASHION_MNIST_CLASSES = list(FashionMNIST.classes)
