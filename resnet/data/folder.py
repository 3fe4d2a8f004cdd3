"""Image trees on disk: `folder` (ImageFolder layout) and `imagenet` (ILSVRC2012 as people have it).

Decoding is fault tolerant (a corrupt file is skipped with a warning, or raises with strict=True),
applies the EXIF orientation, scales 16-bit images to 8 bits, converts every mode (L, CMYK, P,
RGBA, ...) to RGB, refuses images above MAX_PIXELS with one line, and decodes large JPEGs at
reduced size with PIL's draft mode when the transform only needs a smaller image. Folders are
scanned with symlinks followed, each real folder and file once, so a symlink loop cannot hang.
"""

from __future__ import annotations

import csv
import math
import os
import random
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms.v2.functional import pil_to_tensor

DEVKIT = "ILSVRC2012_devkit_t12"
GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
KAGGLE_SOLUTION = "LOC_val_solution.csv"
KAGGLE_SYNSETS = "LOC_synset_mapping.txt"
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
MAX_PIXELS = 64_000_000  # the most pixels an image may decode to (after JPEG draft); larger ones are refused
ORIENTATION = 0x0112  # the EXIF orientation tag
# PIL warns from 89M pixels and refuses from 179M; we refuse above MAX_PIXELS in one line instead of the warning
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def draft_box(size: tuple[int, int], min_side: int) -> tuple[int, int]:
    """The (w, h) to ask PIL's draft for so that the decoded shorter side stays >= min_side."""
    w, h = size
    shorter = min(w, h)
    return max(1, math.ceil(w * min_side / shorter)), max(1, math.ceil(h * min_side / shorter))


def scale_16bit(image: Image.Image) -> Image.Image:
    """A 16-bit grayscale image (modes I;16*, I) as 8-bit L: value / 257, rounded (PIL's convert would clip)."""
    values = np.asarray(image).astype(np.int64).clip(0, 65535)
    return Image.fromarray(((values + 128) // 257).astype(np.uint8), mode="L")


def to_mode(image: Image.Image, mode: str = "RGB") -> Image.Image:
    """Convert any PIL mode (L, CMYK, P, RGBA, I;16, ...) to RGB or L; palette transparency goes through RGBA."""
    if image.mode.startswith("I;16") or image.mode == "I":
        image = scale_16bit(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert(mode)


def open_checked(path: str | Path, min_side: int | None = None, max_pixels: int = MAX_PIXELS,
                 option: str = "predict --max-pixels") -> Image.Image:
    """Open an image lazily (header only), set JPEG draft for min_side, and refuse it above max_pixels.

    Raises ValueError naming the file: not an image, a decompression bomb, or too many pixels (the message names
    `option`, the setting that raises the limit).
    """
    try:
        image = Image.open(path)
        if min_side and min(image.size) > 2 * min_side:
            image.draft("RGB", draft_box(image.size, min_side))
    except Image.DecompressionBombError as error:
        raise ValueError(f"{path}: refused as a possible decompression bomb ({error}; {option} "
                         f"{max_pixels:,})") from None
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such image file") from None
    except DECODE_ERRORS as error:
        reason = "" if isinstance(error, UnidentifiedImageError) else f" ({str(error).splitlines()[0]})"
        raise ValueError(f"{path}: not an image PIL can read{reason}") from None
    w, h = image.size
    if w * h > max_pixels:
        image.close()
        raise ValueError(f"{path}: {w}x{h} is {w * h:,} pixels, above the limit of {max_pixels:,} "
                         f"({option})")
    return image


def upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation tag says (what a photo viewer shows)."""
    if image.getexif().get(ORIENTATION, 1) != 1:
        image = ImageOps.exif_transpose(image)
    return image


def decode_image(path: str | Path, min_side: int | None = None, mode: str = "RGB",
                 max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode an image file upright as RGB (or L), at reduced size for a JPEG whose shorter side may shrink to min_side."""
    with open_checked(path, min_side, max_pixels) as image:
        try:
            return to_mode(upright(image), mode)
        except DECODE_ERRORS as error:
            raise ValueError(f"{path}: cannot decode ({str(error).splitlines()[0]})") from None


@dataclass(frozen=True)
class Unreadable:
    """Stands in for a file that could not be decoded, so that evaluation can leave it out and name it."""

    path: str
    reason: str


class ImageTree(Dataset):
    """(path, label) samples decoded on access; an unreadable file raises (strict), becomes an `Unreadable`
    item (skip_unreadable: evaluation counts only what it read), or is replaced by the next readable one
    (training, so batches keep their size; warned once per file)."""

    def __init__(
        self,
        samples: list[tuple[str, int]],
        info,
        transform: Callable | None = None,
        *,
        strict: bool = False,
        draft: int | None = None,
        skip_unreadable: bool = False,
    ) -> None:
        self.samples = samples
        self.targets = [label for _, label in samples]
        self.info = info
        self.transform = transform
        self.strict = strict
        self.skip_unreadable = skip_unreadable
        self.draft = draft if draft is not None else getattr(transform, "min_side", None)
        self.bad: set[str] = set()

    @property
    def skipped(self) -> int:
        """How many distinct unreadable files this process has skipped so far."""
        return len(self.bad)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tv_tensors.Image:
        """The decoded uint8 RGB image of sample `index`; raises ValueError naming the file if it cannot be read."""
        path = self.samples[index][0]
        try:
            return tv_tensors.Image(pil_to_tensor(decode_image(path, self.draft)))
        except DECODE_ERRORS as error:  # decode_image names the file; OSError and others from PIL do not
            message = str(error) if str(path) in str(error) else f"{path}: {error}"
            raise ValueError(f"cannot read image {message}") from None

    def __getitem__(self, index: int) -> tuple[object, int]:
        if not -len(self.samples) <= index < len(self.samples):
            raise IndexError(index)
        if self.skip_unreadable:
            try:
                image = self.load(index)
            except ValueError as error:
                if self.strict:
                    raise
                return Unreadable(self.samples[index][0], str(error)), self.samples[index][1]
            return (self.transform(image) if self.transform else image), self.samples[index][1]
        for offset in range(len(self.samples)):
            i = (index + offset) % len(self.samples)
            path, label = self.samples[i]
            if path in self.bad:
                continue
            try:
                image = self.load(i)
            except ValueError as error:
                if self.strict:
                    raise
                self.bad.add(path)
                warnings.warn(f"skipping unreadable image ({len(self.bad)} so far): {error}", stacklevel=2)
                continue
            return (self.transform(image) if self.transform else image), label
        raise ValueError(f"no readable image among the {len(self.samples)} files of {self.info.root}")


def _key(path: str | Path) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


def iter_images(directory: str | Path, outside: Iterable[str | Path] = ()) -> Iterator[str]:
    """Image files under directory, sub-folders and symlinks followed, each real folder and file visited once;
    folders in `outside` (the split's top and the other classes) are never entered."""
    seen_dirs: set[tuple[int, int]] = {_key(p) for p in outside if os.path.isdir(p)}
    seen_files: set[tuple[int, int]] = set()
    for top, dirs, files in os.walk(directory, followlinks=True):
        if _key(top) in seen_dirs:  # a symlink back into visited folders: a loop or a repeat
            dirs[:] = []
            continue
        seen_dirs.add(_key(top))
        dirs.sort()
        for name in sorted(files):
            if not name.lower().endswith(IMG_EXTENSIONS):
                continue
            path = os.path.join(top, name)
            try:
                stat = os.stat(path)
            except OSError:  # a dangling symlink
                continue
            if (stat.st_dev, stat.st_ino) not in seen_files:
                seen_files.add((stat.st_dev, stat.st_ino))
                yield path


def image_files(directory: str | Path, outside: Iterable[str | Path] = ()) -> list[str]:
    """Sorted paths of the image files under directory (see iter_images)."""
    return sorted(iter_images(directory, outside))


def has_readable_image(directory: Path, outside: Iterable[str | Path] = ()) -> bool:
    """True if some image file under directory opens with PIL (stops at the first one that does)."""
    for path in iter_images(directory, outside):
        try:
            Image.open(path).close()
            return True
        except DECODE_ERRORS:
            continue
    return False


def class_folder_samples(directory: Path, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    """(path, label) for every image in directory/<class>/ (any depth), class by class, paths sorted; symlinks
    to the top or to another class are not followed."""
    samples = []
    for name, label in sorted(class_to_idx.items(), key=lambda item: item[1]):
        if (directory / name).is_dir():
            outside = [directory, *(directory / other for other in class_to_idx if other != name)]
            samples += [(path, label) for path in image_files(directory / name, outside)]
    return samples


def folder_classes(directory: Path) -> list[str]:
    """The sorted class folder names under directory; a folder without a readable image is warned about and left out."""
    classes = []
    folders = sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    for folder in folders:
        if has_readable_image(folder, [directory, *(f for f in folders if f != folder)]):
            classes.append(folder.name)
        else:
            warnings.warn(f"{folder}: no readable image in this class folder; it is not a class", stacklevel=2)
    if not classes:
        raise FileNotFoundError(f"{directory}: no class folder holds a readable image")
    if len(classes) < 2:  # one class trains to loss 0 and then calls every image that class at 100%
        raise ValueError(f"{directory}: only one class folder ({classes[0]}) holds readable images; a classifier "
                         f"needs at least 2 (one sub-folder per class, e.g. {directory}/cat/ and {directory}/dog/)")
    return classes


def untwinned_folders(directory: Path, class_to_idx: dict[str, int]) -> list[Path]:
    """The class folders under directory (a val/) whose name is not a training class: their images cannot be scored."""
    return sorted(p for p in directory.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and p.name not in class_to_idx)


def held_out_class_samples(directory: Path, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    """`class_folder_samples` for a held-out split (val/), warning by name about class folders that have no twin in
    train/: they are left out (the network has no output for them), and the warning says how many images that is."""
    extra = untwinned_folders(directory, class_to_idx)
    if extra:
        count = sum(len(image_files(p, [directory])) for p in extra)
        names = ", ".join(p.name for p in extra[:10]) + (f" and {len(extra) - 10} more" if len(extra) > 10 else "")
        warnings.warn(f"{directory}: {len(extra)} class folder(s) with no twin in train/ are left out "
                      f"({count} image(s)): {names}", stacklevel=2)
    return class_folder_samples(directory, class_to_idx)


def sample_sizes(directory: Path, classes: list[str], per_class: int = 8, max_classes: int = 16,
                 seed: int = 0) -> list[tuple[int, int]]:
    """(w, h) read from the headers of a few images of a few classes (seeded): enough to see the data's size."""
    chosen = random.Random(seed).sample(classes, min(max_classes, len(classes)))
    sizes = []
    for name in sorted(chosen):
        for count, path in enumerate(iter_images(directory / name, [directory])):
            if count == per_class:
                break
            try:
                with Image.open(path) as image:
                    sizes.append(image.size)
            except DECODE_ERRORS:
                continue
    return sizes


def has_class_folders(directory: Path) -> bool:
    """True if directory has at least one sub-folder (a class)."""
    return directory.is_dir() and any(p.is_dir() for p in directory.iterdir())


def is_flat(directory: Path) -> bool:
    """True if directory holds images directly rather than in class folders (ILSVRC2012 val as shipped)."""
    return any(p.is_file() and p.name.lower().endswith(IMG_EXTENSIONS) for p in directory.iterdir())


def _find_upwards(root: Path, relative: str, levels: int = 3) -> Path | None:
    """root/relative, or the same name in one of root's parents (Kaggle puts its CSVs three levels up)."""
    for folder in [root, *list(root.parents)[:levels]]:
        if (folder / relative).exists():
            return folder / relative
    return None


def _load_meta_mat(devkit: Path) -> tuple[dict[int, str], dict[str, str]]:
    """ILSVRC2012_ID -> wnid and wnid -> words for the 1000 leaf synsets of the devkit's meta.mat."""
    try:
        import scipy.io
    except ImportError:
        raise RuntimeError(
            f"reading {devkit / 'data' / 'meta.mat'} needs scipy (pip install scipy); or put {KAGGLE_SOLUTION} "
            f"next to the data, or sort val/ into val/<wnid>/ folders"
        ) from None
    synsets = scipy.io.loadmat(str(devkit / "data" / "meta.mat"), squeeze_me=True)["synsets"]
    leaves = [s for s in synsets if int(s["num_children"]) == 0]
    id_to_wnid = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in leaves}
    words = {str(s["WNID"]): str(s["words"]) for s in leaves}
    return id_to_wnid, words


def _val_number(path: str) -> int:
    """ILSVRC2012_val_00000042.JPEG -> 42."""
    return int(Path(path).stem.rsplit("_", 1)[-1])


def flat_val_labels(root: Path, val: Path) -> dict[str, str]:
    """file stem -> wnid for a flat val/ folder, from the devkit's ground truth or Kaggle's LOC_val_solution.csv."""
    solution = _find_upwards(root, KAGGLE_SOLUTION)
    if solution is not None:
        with open(solution, newline="") as f:
            return {row["ImageId"]: row["PredictionString"].split()[0] for row in csv.DictReader(f)}
    devkit = _find_upwards(root, DEVKIT)
    if devkit is not None and (devkit / "data" / GROUND_TRUTH).exists():
        id_to_wnid, _ = _load_meta_mat(devkit)
        ids = [int(line) for line in (devkit / "data" / GROUND_TRUTH).read_text().split()]
        files = sorted(p for p in val.iterdir() if p.name.lower().endswith(IMG_EXTENSIONS))
        return {p.stem: id_to_wnid[ids[_val_number(p.name) - 1]] for p in files}
    raise FileNotFoundError(
        f"{val} holds images without class folders, but no ground truth was found: expected "
        f"{DEVKIT}/data/{GROUND_TRUTH} (+ meta.mat) or {KAGGLE_SOLUTION} in {root} or a parent, "
        f"or val/<wnid>/*.JPEG folders"
    )


def class_words(root: Path, wnids: list[str]) -> list[str]:
    """Human-readable names for wnids, from Kaggle's LOC_synset_mapping.txt or the devkit's meta.mat, else the wnids."""
    mapping = _find_upwards(root, KAGGLE_SYNSETS)
    words: dict[str, str] = {}
    if mapping is not None:
        for line in mapping.read_text().splitlines():
            wnid, _, name = line.strip().partition(" ")
            words[wnid] = name
    else:
        devkit = _find_upwards(root, DEVKIT)
        if devkit is not None and (devkit / "data" / "meta.mat").exists():
            try:
                words = _load_meta_mat(devkit)[1]
            except RuntimeError:
                words = {}
    return [words.get(w, w) for w in wnids]


def flat_val_samples(root: Path, val: Path, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    """(path, label) for a flat val/ folder, labels from the ground truth; files it does not list are an error."""
    labels = flat_val_labels(root, val)
    samples = []
    for path in sorted(p for p in val.iterdir() if p.name.lower().endswith(IMG_EXTENSIONS)):
        if path.stem not in labels:
            raise FileNotFoundError(f"{path} is not listed in the validation ground truth")
        samples.append((str(path), class_to_idx[labels[path.stem]]))
    return samples


def _mean_over(dataset: ImageTree, side: int, max_images: int, seed: int, reduce: Callable) -> torch.Tensor:
    """The mean on 0..1 of reduce(image resized to shorter side `side`) over up to max_images images (chosen
    by seed); unreadable files are warned about and left out."""
    from torchvision.transforms.v2 import functional as F
    from tqdm import tqdm

    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:max_images]
    total, count = 0.0, 0
    for i in tqdm(order.tolist(), desc=f"pixel mean of {dataset.info.name}", unit="img", leave=False, disable=None):
        path = dataset.samples[i][0]
        try:
            image = pil_to_tensor(decode_image(path, side))
        except DECODE_ERRORS as error:
            warnings.warn(f"pixel mean: skipping unreadable image {path}: {error}", stacklevel=2)
            continue
        total = total + reduce(F.resize(image, side, antialias=True).double())
        count += 1
    if count == 0:
        raise ValueError(f"no readable training image in {dataset.info.root}")
    return (total / count / 255).float()


def mean_image(dataset: ImageTree, size: int, max_images: int = 50_000, seed: int = 0) -> torch.Tensor:
    """Per-pixel mean [3,size,size] on 0..1 of up to max_images images (chosen by seed), each fitted to size x size."""
    from torchvision.transforms.v2 import functional as F

    return _mean_over(dataset, size, max_images, seed, lambda image: F.center_crop(image, size))


def channel_mean(dataset: ImageTree, max_images: int = 10_000, side: int = 64, seed: int = 0) -> torch.Tensor:
    """Per-channel mean [3,1,1] on 0..1 of up to max_images images (chosen by seed), each resized to shorter side `side`."""
    return _mean_over(dataset, side, max_images, seed, lambda image: image.mean(dim=(1, 2)))[:, None, None]
