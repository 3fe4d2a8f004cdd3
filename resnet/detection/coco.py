"""COCO-format detection data: COCO's own layout and the generic one labelling tools export, and loaders.

Layouts (`coco_split_files`), under one folder:
- COCO's own: annotations/instances_{train,val}2017.json with the images in {train,val}2017/;
- generic: {split}.json (one COCO json per split) with the images in {split}/, images/ or the folder
  itself (file_name is relative to that image folder); fashion-scenes is written this way.
Any other pair of files: `CocoDetection(annotation_file, image_folder)`.

pycocotools indexes the json (and turns polygons or RLE into masks). Annotations are checked once, when
the dataset is made: a malformed json, an annotation of an unknown image or category is one line naming the
file and the entry; then datacheck.py checks every image entry against its file's header (and ids, names,
segmentations) and names every bad entry in one line (ValueError / FileNotFoundError; the CLI exits with 2).
Images are read in one channel count for all splits (RGB unless every image is grayscale).
Boxes partly outside their image are clipped to it; boxes empty or degenerate after that (no area, not
finite) are dropped; both are counted in one warning. Crowd regions (iscrowd=1) are left out of the
training targets (COCOeval still reads them); images without objects stay, as negatives.

Samples are (image [C,H,W] float on 0..1, target) with target {"boxes": [N,4] x1y1x2y2, "labels": [N]
1..K (contiguous; `category_ids[label - 1]` is the COCO id), "image_id", and with masks "masks" [N,H,W]
uint8}. Training augmentation is torchvision.transforms.v2 on tv_tensors (Image, BoundingBoxes, Mask),
so boxes and masks follow the image: a horizontal flip, and scale jitter (RandomAffine zooming the
image by a factor in `scale_range` about its centre, the canvas size kept; objects cut by the edge keep
the visible part, ones that leave entirely are dropped by SanitizeBoundingBoxes).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from resnet.data.folder import MAX_PIXELS
from resnet.detection.datacheck import SplitFacts, check_split, default_sizes
from resnet.errors import one_line

SPLITS = ("train", "val")
SCALE_RANGE = (0.8, 1.25)


def read_json(path: Path) -> dict:
    """A COCO json as a dict, or one line naming the file and where it is malformed."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such annotation file") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: malformed json (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a text file ({e.reason})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a COCO json is an object with images, annotations and categories, not a "
                         f"{type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key, []), list):
            raise ValueError(f"{path}: {key!r} is a {type(data[key]).__name__}, not a list")
    return data


def _entry_check(path: Path, kind: str, index: int, entry: object, fields: dict[str, type | tuple]) -> None:
    """Each field present with its type, or one line naming the file and the entry."""
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: {kind}[{index}] is a {type(entry).__name__}, not an object")
    for name, kind_ in fields.items():
        if not isinstance(entry.get(name), kind_) or isinstance(entry.get(name), bool):
            ident = f" (id {entry['id']})" if "id" in entry else ""
            raise ValueError(f"{path}: {kind}[{index}]{ident} has no valid {name!r} ({entry.get(name)!r})")


def check_coco(data: dict, path: Path) -> None:
    """Structure and cross-references: images, categories and annotations that point at both."""
    number = (int, float)
    for i, image in enumerate(data.get("images", [])):
        _entry_check(path, "images", i, image, {"id": int, "file_name": str, "width": int, "height": int})
    for i, category in enumerate(data.get("categories", [])):
        _entry_check(path, "categories", i, category, {"id": int, "name": str})
    image_ids = {image["id"] for image in data.get("images", [])}
    category_ids = {c["id"] for c in data.get("categories", [])}
    for i, ann in enumerate(data.get("annotations", [])):
        _entry_check(path, "annotations", i, ann, {"id": int, "image_id": int, "category_id": int, "bbox": list})
        box = ann["bbox"]
        if len(box) != 4 or not all(isinstance(v, number) and not isinstance(v, bool) for v in box):
            raise ValueError(f"{path}: annotations[{i}] (id {ann['id']}) has bbox {box!r}, not [x, y, width, height]")
        if ann["image_id"] not in image_ids:
            raise ValueError(f"{path}: annotations[{i}] (id {ann['id']}) refers to image_id {ann['image_id']}, "
                             f"which is not in 'images'")
        if ann["category_id"] not in category_ids:
            known = ", ".join(map(str, sorted(category_ids))) or "none"
            raise ValueError(f"{path}: annotations[{i}] (id {ann['id']}) has category_id {ann['category_id']}, "
                             f"not among the categories ({known})")


def clip_box(box: list[float], width: int, height: int) -> tuple[list[float], str]:
    """A COCO [x, y, w, h] box as x1y1x2y2 clipped to the image, and 'kept', 'clipped' or 'dropped'."""
    x, y, w, h = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        return [], "dropped"
    x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))
    if x2 <= x1 or y2 <= y1:
        return [], "dropped"
    return [x1, y1, x2, y2], "clipped" if (x1, y1, x2, y2) != (x, y, x + w, y + h) else "kept"


def _coco_index(data: dict):
    """pycocotools' COCO over an already checked dict (its index-building messages silenced)."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class CocoDetection(Dataset):
    """One split of a COCO-format dataset: (image, target) samples; `coco` is pycocotools' index of it."""

    def __init__(self, annotation_file: str | Path, image_folder: str | Path, *, masks: bool = False,
                 transforms=None, channels: int | None = None, max_pixels: int = MAX_PIXELS) -> None:
        self.annotation_file, self.image_folder = Path(annotation_file), Path(image_folder)
        data = read_json(self.annotation_file)
        data.setdefault("annotations", [])
        data.setdefault("categories", [])
        check_coco(data, self.annotation_file)
        self.facts = check_split(data, self.annotation_file, self.image_folder, masks=masks, max_pixels=max_pixels)
        self.coco = _coco_index(data)
        order = sorted(range(len(data["images"])), key=lambda i: data["images"][i]["id"])
        self.images = [data["images"][i] for i in order]
        self.facts = SplitFacts([self.facts.sizes[i] for i in order], [self.facts.grayscale[i] for i in order])
        self.category_ids = sorted(c["id"] for c in data["categories"])
        if not self.category_ids:
            raise ValueError(f"{self.annotation_file}: no categories: a COCO json lists its object classes in "
                             f"'categories' ([{{\"id\": 1, \"name\": \"cat\"}}, ...])")
        self.class_names = [self.coco.cats[c]["name"] for c in self.category_ids]
        self.masks, self.transforms, self.channels, self.max_pixels = masks, transforms, channels, max_pixels
        self.targets = self._targets()

    @property
    def objects(self) -> int:
        """Objects the targets hold (boxes kept after clipping, crowd regions left out)."""
        return sum(len(t["boxes"]) for t in self.targets)

    def _targets(self) -> list[dict]:
        """Per image: clipped boxes, labels and the annotations they came from; one warning for all dropped/clipped."""
        label_of = {c: i + 1 for i, c in enumerate(self.category_ids)}
        counts = {"kept": 0, "clipped": 0, "dropped": 0}
        targets = []
        for image in self.images:
            boxes, labels, anns = [], [], []
            for ann in self.coco.imgToAnns.get(image["id"], []):
                if ann.get("iscrowd", 0):
                    continue
                box, how = clip_box(ann["bbox"], image["width"], image["height"])
                counts[how] += 1
                if box:
                    boxes.append(box)
                    labels.append(label_of[ann["category_id"]])
                    anns.append(ann)
            targets.append({"boxes": boxes, "labels": labels, "anns": anns})
        if counts["dropped"] or counts["clipped"]:
            total = sum(counts.values())
            warnings.warn(f"{self.annotation_file}: of {total} boxes, {counts['clipped']} partly outside their image "
                          f"were clipped to it and {counts['dropped']} empty or degenerate ones were dropped",
                          stacklevel=3)
        return targets

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        """Object classes plus the background (create_detector's num_classes)."""
        return len(self.category_ids) + 1

    def image_channels(self) -> int:
        """The channels samples have: `channels`, else 1 if every image is grayscale, else 3 (RGB: grayscale,
        16-bit, palette and RGBA images are converted, as the classification folders do)."""
        if self.channels is not None:
            return self.channels
        return 1 if self.facts.grayscale and all(self.facts.grayscale) else 3

    def read_image(self, index: int) -> torch.Tensor:
        """The image of entry `index` as uint8 [C,H,W]; a file that does not decode is one line naming it and its
        json entry (raised in a loader worker, it ends the run with that line: resnet.data.loaders)."""
        from resnet.predict import read_image

        info = self.images[index]
        try:
            return read_image(self.image_folder / info["file_name"], self.image_channels(), max_pixels=self.max_pixels)
        except (ValueError, OSError) as error:
            raise ValueError(f"{self.annotation_file}: image id {info['id']} ({info['file_name']!r}): "
                             f"{one_line(error)}") from None

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        info, raw = self.images[index], self.targets[index]
        image = tv_tensors.Image(self.read_image(index))
        h, w = image.shape[-2:]
        if (h, w) != (info["height"], info["width"]):
            raise ValueError(f"{self.annotation_file}: image id {info['id']} ({info['file_name']}) is {w}x{h}, "
                             f"the json says {info['width']}x{info['height']}")
        target = {"boxes": tv_tensors.BoundingBoxes(torch.tensor(raw["boxes"], dtype=torch.float32).reshape(-1, 4),
                                                    format="XYXY", canvas_size=(h, w)),
                  "labels": torch.tensor(raw["labels"], dtype=torch.int64)}
        if self.masks:
            stack = [torch.from_numpy(self.coco.annToMask(a)) for a in raw["anns"]]
            target["masks"] = tv_tensors.Mask(torch.stack(stack) if stack else torch.zeros(0, h, w, dtype=torch.uint8))
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        out = {"boxes": target["boxes"].as_subclass(torch.Tensor), "labels": target["labels"],
               "image_id": torch.tensor(info["id"])}
        if self.masks:
            out["masks"] = target["masks"].as_subclass(torch.Tensor)
        return v2.functional.to_dtype(image, torch.float32, scale=True).as_subclass(torch.Tensor), out


def train_transforms(scale_range: tuple[float, float] | None = SCALE_RANGE, flip: bool = True) -> v2.Compose:
    """Horizontal flip and scale jitter on tv_tensors (boxes and masks follow the image), then boxes cut to
    nothing removed; draws come from torch's generator (seeded per sample by the loader)."""
    steps: list = [v2.RandomHorizontalFlip(0.5)] if flip else []
    if scale_range is not None:
        steps.append(v2.RandomAffine(degrees=0.0, scale=tuple(scale_range)))
    steps += [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=1.0)]
    return v2.Compose(steps)


def collate_detection(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """(list of images, list of targets): torchvision's detectors take images of different sizes as a list."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def coco_split_files(root: str | Path, split: str) -> tuple[Path, Path]:
    """(annotation json, image folder) of `split` in a COCO-layout or generic folder, or one line saying what was looked for."""
    root = Path(root).expanduser()
    own = root / "annotations" / f"instances_{split}2017.json"
    if own.is_file():
        return own, root / f"{split}2017"
    generic = root / f"{split}.json"
    if generic.is_file():
        folder = next((f for f in (root / split, root / "images") if f.is_dir()), root)
        return generic, folder
    raise FileNotFoundError(f"{root}: no {split} split: expected annotations/instances_{split}2017.json (COCO's "
                            f"layout) or {split}.json (one COCO json per split, images in {split}/ or images/)")


@dataclass
class DetectionDataInfo:
    """What a detector for this data needs to know (create_detector's options) and where it came from."""

    name: str
    root: Path
    class_names: list[str]
    channels: int
    image_size: int | None = None  # the canvas side when every image has it (fashion-scenes)
    sizes: dict[str, int] = field(default_factory=dict)  # images per split
    category_ids: list[int] = field(default_factory=list)  # the json's id of each class, in label order
    min_size: int | None = None  # the detector's input scale chosen from the data (`default_sizes`)
    max_size: int | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names) + 1

    def detector_options(self) -> dict:
        """num_classes, class_names, category_ids and in_channels for create_detector; min/max size from the data."""
        options = {"num_classes": self.num_classes, "class_names": list(self.class_names), "in_channels": self.channels}
        if self.category_ids:
            options["category_ids"] = list(self.category_ids)
        if self.min_size is not None:
            options.update(min_size=self.min_size, max_size=self.max_size)
        return options


def data_root(data: str, data_dir: str | Path | None) -> Path:
    """The folder of a detection dataset: `data_dir`, else the data home's folder of that name."""
    from resnet.data.small import data_home

    if data_dir is not None:
        return Path(data_dir).expanduser()
    if data == "fashion-scenes":
        from resnet.detection.scenes import default_folder

        folder = default_folder()
        if not (folder / "train.json").is_file():
            raise FileNotFoundError(f"fashion-scenes: not in {folder}; run `resnet data fashion-scenes` first")
        return folder
    return data_home() / data


DATASETS = ("fashion-scenes", "coco")


def detection_datasets(data: str, data_dir: str | Path | None = None, *, masks: bool = False,
                       augment: bool = True, scale_range: tuple[float, float] | None = SCALE_RANGE,
                       splits: tuple[str, ...] = SPLITS,
                       max_pixels: int = MAX_PIXELS) -> tuple[dict[str, CocoDetection], DetectionDataInfo]:
    """The splits of a COCO-format dataset ("fashion-scenes", or "coco" for any folder in either layout), each
    checked when opened (datacheck.py), read in one channel count, with the detector's input size chosen from
    the images' sizes; a training split without objects, or a validation split without objects, is refused."""
    if data not in DATASETS:
        raise ValueError(f"unknown detection dataset {data!r}; known: {', '.join(DATASETS)} (coco: any COCO-format "
                         f"folder given as data_dir)")
    root = data_root(data, data_dir)
    datasets = {}
    for split in splits:
        annotations, images = coco_split_files(root, split)
        transforms = train_transforms(scale_range) if split == "train" and augment else None
        datasets[split] = CocoDetection(annotations, images, masks=masks, transforms=transforms, max_pixels=max_pixels)
    first = next(iter(datasets.values()))
    for split, dataset in datasets.items():
        if dataset.class_names != first.class_names or dataset.category_ids != first.category_ids:
            raise ValueError(f"{dataset.annotation_file}: its categories differ from {first.annotation_file}'s")
        check_objects(split, dataset)
    channels = common_channels(list(datasets.values()))
    all_sizes = [size for d in datasets.values() for size in d.facts.sizes]
    sizes = set(all_sizes)
    side = next(iter(sizes))[0] if len(sizes) == 1 and len(set(next(iter(sizes)))) == 1 else None
    min_size, max_size = (side, side) if side is not None else default_sizes(all_sizes)
    info = DetectionDataInfo(data, root, first.class_names, channels, side,
                             {split: len(d) for split, d in datasets.items()}, list(first.category_ids),
                             min_size, max_size)
    return datasets, info


def check_objects(split: str, dataset: CocoDetection) -> None:
    """Refuse a split with no object to learn from or to score against; count the training images without any."""
    if not dataset.objects:
        use = "learn from" if split == "train" else "evaluate on (AP over no objects is undefined)"
        raise ValueError(f"{dataset.annotation_file}: no objects to {use}: {len(dataset)} images and "
                         f"{len(dataset.coco.dataset['annotations'])} annotations (crowd regions and empty boxes "
                         f"do not count); add annotations to the {split} split")
    empty = sum(not t["boxes"] for t in dataset.targets)
    if split == "train" and empty:
        warnings.warn(f"{dataset.annotation_file}: {empty} of {len(dataset)} training images have no objects; they "
                      f"train as negatives (background only)", stacklevel=3)


def common_channels(datasets: list[CocoDetection]) -> int:
    """1 if every image of every split is grayscale, else 3; said once when some images are converted."""
    gray = [g for d in datasets for g in d.facts.grayscale]
    channels = 1 if gray and all(gray) else 3
    for dataset in datasets:
        dataset.channels = channels
    if channels == 3 and any(gray):
        warnings.warn(f"{datasets[0].annotation_file.parent}: {sum(gray)} of {len(gray)} images are grayscale and "
                      f"the others colour: all are read as RGB", stacklevel=3)
    return channels


def build_detection_data(data: str, data_dir: str | Path | None, batch_size: int, seed: int = 0, rank: int = 0,
                         world_size: int = 1, *, masks: bool = False, augment: bool = True,
                         scale_range: tuple[float, float] | None = SCALE_RANGE, num_workers: int | None = None,
                         device: str | torch.device = "cpu", eval_batch_size: int | None = None,
                         max_pixels: int = MAX_PIXELS):
    """(train loader, {"val": val loader}, DetectionDataInfo) for the training engine.

    Loaders are resnet.data.loaders' ResumableLoader: len() in batches per process, set_epoch(epoch,
    start_batch) for exact resume (each sample's augmentation is seeded by (seed, epoch, index)), batches of
    (list of images, list of targets). Training drops the last partial batch; validation keeps every image.
    """
    from resnet.data.loaders import build_loader

    datasets, info = detection_datasets(data, data_dir, masks=masks, augment=augment, scale_range=scale_range,
                                        max_pixels=max_pixels)
    common = {"seed": seed, "rank": rank, "world_size": world_size, "num_workers": num_workers, "device": device,
              "collate_fn": collate_detection}
    train = build_loader(datasets["train"], batch_size, train=True, **common)
    val = build_loader(datasets["val"], eval_batch_size or batch_size, train=False, **common)
    train.dataset, val.dataset = datasets["train"], datasets["val"]
    return train, {"val": val}, info
