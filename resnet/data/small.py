"""Readers for the small datasets held in memory: CIFAR-10/100 (python pickle batches) and Fashion-MNIST (IDX).

Downloads go through torchvision's code (URLs, mirrors, md5 checks); reading is done here so the
files can come from anywhere (Debian's package, a test, a hand copy) and so that a CIFAR pickle can
only ever build dicts, lists, strings and numpy arrays, never run code.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import urllib.error
import warnings
import zlib
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
    except (OSError, EOFError, zlib.error) as error:  # zlib.error: a corrupt deflate stream (not an OSError)
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


# The published files: the md5 of the .gz from torchvision's mirrors and of Debian's copy (the same data
# recompressed with gzip -n), and the size and md5 of the IDX data inside, which every intact copy holds.
FASHION_PUBLISHED = {
    "train-images-idx3-ubyte": ({"8d4fb7e6c68d591d4c3dfef9ec88bf0d", "cf8536b0aa1a6ac5fa3f23001093305c"},
                                47_040_016, "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
    "train-labels-idx1-ubyte": ({"25c81989df183df01b3e8a0aad5dffbe", "10bea18fdb374794d4bb42e356e600c9"},
                                60_008, "9018921c3c673c538a1fc5bad174d6f9"),
    "t10k-images-idx3-ubyte": ({"bef4ecab320f06d8554ea6380940ec79", "f78720b4224f21cce2f2ccf2d7a94c9a"},
                               7_840_016, "8181f5470baa50b63fa0f6fddb340f0a"),
    "t10k-labels-idx1-ubyte": ({"bb300cfdad3c16e7a12a480ee83cd310", "0d30e22e447f3c33dab9ed536400ac01"},
                               10_008, "15d484375f8d13e6eb1aabb0c3f46965"),
}


def _idx_length(header: bytes) -> int | None:
    """The byte length an IDX file of unsigned bytes declares in its header, or None if it is not one."""
    if len(header) < 4 or header[:2] != b"\0\0" or header[2] != 0x08 or len(header) < 4 + 4 * header[3]:
        return None
    shape = struct.unpack(f">{header[3]}I", header[4:4 + 4 * header[3]])
    return 4 + 4 * header[3] + int(np.prod(shape))


def idx_damage(path: Path) -> str | None:
    """Why an IDX file (gzipped or raw) is damaged, from its header and size alone (cheap enough for every start),
    or None: empty, not gzip, not IDX, or truncated (a .gz's trailer records the length of the data it holds).
    Damage inside the data (a flipped bit) shows only when it is read (gzip's CRC): see `fashion_mismatch`."""
    try:
        size = path.stat().st_size
        if size == 0:
            return f"{path.name} is empty"
        if path.suffix != ".gz":
            with open(path, "rb") as f:
                expected = _idx_length(f.read(4 + 4 * 255))
            return None if expected == size else f"{path.name} is not an IDX file of its declared size"
        with gzip.open(path, "rb") as f:
            expected = _idx_length(f.read(4 + 4 * 4))
        with open(path, "rb") as f:
            f.seek(-4, os.SEEK_END)
            recorded = struct.unpack("<I", f.read(4))[0]  # gzip's ISIZE: the data's length mod 2^32
    except (OSError, EOFError, struct.error, zlib.error) as error:
        return f"{path.name} cannot be read as gzip ({str(error).splitlines()[0] or type(error).__name__})"
    if expected is None:
        return f"{path.name} is not an IDX file"
    return None if recorded == expected % 2**32 else f"{path.name} is truncated"


def fashion_mismatch(path: Path) -> tuple[str, str] | None:
    """(kind, why) when `path` is not the published Fashion-MNIST file of its name, else None: kind "damaged" (it
    cannot be read whole: empty, truncated, corrupt) or "different" (a readable IDX file, but other data). Checks
    the .gz's md5 first, then the size and md5 of the data inside (so any gzip recompression passes)."""
    stem = path.name.removesuffix(".gz")
    gz_md5s, size, md5 = FASHION_PUBLISHED[stem]
    damage = idx_damage(path)
    if damage:
        return "damaged", damage
    raw = path.read_bytes()
    if path.suffix == ".gz":
        if hashlib.md5(raw).hexdigest() in gz_md5s:
            return None
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            return "damaged", f"{path.name} is corrupt ({str(error).splitlines()[0]})"
    if len(raw) != size:
        return "different", f"{path.name} holds {len(raw):,} bytes of data, the published file {size:,}"
    if hashlib.md5(raw).hexdigest() != md5:
        return "different", f"{path.name}'s md5 is not the published file's"
    return None


def fashion_mnist_candidates(data_dir: str | Path | None) -> list[Path]:
    """Folders that may hold the IDX files: data_dir (or $RESNET_DATA / ~/.cache/resnet) then Debian's package."""
    bases = [Path(data_dir).expanduser()] if data_dir is not None else [data_home() / "fashion-mnist", DEBIAN_FASHION_MNIST]
    return [folder for base in bases for folder in (base, base / "FashionMNIST" / "raw", base / "raw")]


def fashion_damage(folder: Path) -> list[str]:
    """Why the IDX files in `folder` are damaged (cheap checks, `idx_damage`); empty when they look intact."""
    files = [_idx_file(folder, stem) for pair in FASHION_FILES.values() for stem in pair]
    return [why for why in (idx_damage(f) for f in files if f is not None) if why]


def fashion_mnist_root(data_dir: str | Path | None, download: bool) -> Path:
    """The folder holding the four Fashion-MNIST IDX files (gz or raw); downloaded through torchvision if allowed.

    In the default places a damaged copy (empty, truncated, not gzip) in $RESNET_DATA or ~/.cache/resnet does not
    shadow an intact one after it (Debian's): it is skipped with a warning naming it (`resnet data fashion-mnist`
    moves it aside). A --data-dir is used as it is: its reader names a damaged file.
    """
    complete = [folder for folder in fashion_mnist_candidates(data_dir) if _fashion_complete(folder)]
    for i, folder in enumerate(complete):
        damage = fashion_damage(folder) if data_dir is None and i < len(complete) - 1 else []
        if not damage:
            return folder
        warnings.warn(f"fashion-mnist: skipping the damaged copy in {folder} ({'; '.join(damage)}); using "
                      f"{complete[i + 1]} (`resnet data fashion-mnist` moves the damaged files aside)", stacklevel=2)
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
