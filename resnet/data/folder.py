"""Image trees on disk: `folder` (ImageFolder layout) and `imagenet` (ILSVRC2012 as people have it).

Decoding is fault tolerant (a corrupt file is skipped with a warning, or raises with strict=True),
converts every mode (L, CMYK, P, RGBA, ...) to RGB, and decodes large JPEGs at reduced size with
PIL's draft mode when the transform only needs a smaller image.
"""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path
from typing import Callable

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
from torchvision.transforms.v2.functional import pil_to_tensor

DEVKIT = "ILSVRC2012_devkit_t12"
GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
KAGGLE_SOLUTION = "LOC_val_solution.csv"
KAGGLE_SYNSETS = "LOC_synset_mapping.txt"
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def draft_box(size: tuple[int, int], min_side: int) -> tuple[int, int]:
    """The (w, h) to ask PIL's draft for so that the decoded shorter side stays >= min_side."""
    w, h = size
    shorter = min(w, h)
    return max(1, math.ceil(w * min_side / shorter)), max(1, math.ceil(h * min_side / shorter))


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode (L, CMYK, P, RGBA, I;16, ...) to RGB; palette transparency goes through RGBA."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def decode_image(path: str | Path, min_side: int | None = None) -> Image.Image:
    """Open an image file as RGB, decoding a JPEG at reduced size when its shorter side may shrink to min_side."""
    with Image.open(path) as image:
        if min_side and min(image.size) > 2 * min_side:
            image.draft("RGB", draft_box(image.size, min_side))
        return to_rgb(image)


class ImageTree(Dataset):
    """(path, label) samples decoded on access; unreadable files are skipped (warned, counted) or raise if strict."""

    def __init__(
        self,
        samples: list[tuple[str, int]],
        info,
        transform: Callable | None = None,
        *,
        strict: bool = False,
        draft: int | None = None,
    ) -> None:
        self.samples = samples
        self.targets = [label for _, label in samples]
        self.info = info
        self.transform = transform
        self.strict = strict
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
        except DECODE_ERRORS as error:
            raise ValueError(f"cannot read image {path}: {error}") from None

    def __getitem__(self, index: int) -> tuple[object, int]:
        if not -len(self.samples) <= index < len(self.samples):
            raise IndexError(index)
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


def class_folder_samples(directory: Path, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    """(path, label) for every image in directory/<class>/, using torchvision's ImageFolder scan."""
    return make_dataset(str(directory), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)


def folder_classes(directory: Path) -> list[str]:
    """The sorted class folder names under directory (ImageFolder's rule)."""
    return find_classes(str(directory))[0]


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


def channel_mean(dataset: ImageTree, max_images: int = 10_000, side: int = 64, seed: int = 0) -> torch.Tensor:
    """Per-channel mean [3,1,1] on 0..1 of up to max_images images (chosen by seed), each resized to shorter side `side`."""
    from torchvision.transforms.v2 import functional as F
    from tqdm import tqdm

    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:max_images]
    total = torch.zeros(3, dtype=torch.float64)
    count = 0
    for i in tqdm(order.tolist(), desc=f"pixel mean of {dataset.info.name}", unit="img", leave=False, disable=None):
        path = dataset.samples[i][0]
        try:
            image = pil_to_tensor(decode_image(path, side))
        except DECODE_ERRORS as error:
            warnings.warn(f"pixel mean: skipping unreadable image {path}: {error}", stacklevel=2)
            continue
        image = F.resize(image, side, antialias=True)
        total += image.double().mean(dim=(1, 2))
        count += 1
    if count == 0:
        raise ValueError(f"no readable training image in {dataset.info.root}")
    return (total / count / 255).float()[:, None, None]
