"""fashion-scenes: an offline detection and instance-segmentation dataset composed from Fashion-MNIST.

Each canvas (size x size, grayscale) has a textured grey background (a smooth random field plus fine
noise) and 1 to `max_items` Fashion-MNIST items pasted at random positions and scales (each item's side
is 20% to 50% of the canvas). An item's pixels are those brighter than `ITEM_THRESHOLD` in its resized
image; they are pasted over the background, and they are also its instance mask, so masks and boxes come
from exactly the pixels that were drawn (the box is the mask's bounding box, COCO's [x, y, w, h] in pixel
edges). Overlap is limited: a new item, drawn on top, may cover at most `MAX_COVERED` of the visible pixels
of each earlier item (else another position is tried, up to 20); an earlier item's mask keeps only its
pixels left visible.

The 10 categories are Fashion-MNIST's, with COCO ids 1..10. Train canvases use Fashion-MNIST's training
images only, val canvases its test images only. Every canvas is drawn from its own generator seeded by
(seed, split, index), so the data is a pure function of the parameters. Written as the generic COCO form
(train.json, val.json, train/*.png, val/*.png, masks as RLE) into a temporary folder renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from resnet.data.small import FASHION_MNIST_CLASSES, data_home, fashion_mnist_root, read_fashion_mnist
from resnet.errors import one_line

NAME = "fashion-scenes"
ITEM_THRESHOLD = 30  # Fashion-MNIST pixels above this (of 255) belong to the item
MAX_COVERED = 0.2  # at most this share of an earlier item's pixels may be covered by a later one
ITEM_SCALE = (0.2, 0.5)  # an item's side as a share of the canvas side
SPLIT_SOURCE = {"train": "train", "val": "test"}  # which Fashion-MNIST split each split draws from
SPLIT_CODE = {"train": 0, "val": 1}


def default_folder() -> Path:
    """$RESNET_DATA/fashion-scenes, or ~/.cache/resnet/fashion-scenes (where the other datasets live)."""
    return data_home() / NAME


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A grey canvas with texture: a base level, a smooth random field, and fine noise (float, 0..255)."""
    base = rng.uniform(70, 150)
    coarse = torch.from_numpy(rng.normal(0, 18, (1, 1, max(2, size // 16), max(2, size // 16))).astype(np.float32))
    smooth = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0, 0].numpy()
    return np.clip(base + smooth + rng.normal(0, 4, (size, size)), 0, 255)


def resize_item(item: np.ndarray, side: int) -> np.ndarray:
    """A 28x28 uint8 item resized to side x side (bilinear, antialiased), float 0..255."""
    t = torch.from_numpy(item.astype(np.float32))[None, None]
    return F.interpolate(t, size=(side, side), mode="bilinear", antialias=True, align_corners=False)[0, 0].numpy()


def compose_canvas(rng: np.random.Generator, items: np.ndarray, labels: np.ndarray, size: int,
                   max_items: int) -> tuple[np.ndarray, list[dict]]:
    """One canvas (uint8 [size,size]) and its objects [{"label", "source", "mask" (bool [size,size])}]."""
    canvas = background(rng, size)
    objects: list[dict] = []
    wanted = int(rng.integers(1, max_items + 1))
    for _ in range(wanted):
        source = int(rng.integers(len(items)))
        side = int(round(rng.uniform(*ITEM_SCALE) * size))
        pixels = resize_item(items[source], side)
        shape = pixels > ITEM_THRESHOLD
        if not shape.any():
            continue
        for _attempt in range(20):
            y, x = (int(v) for v in rng.integers(0, size - side + 1, 2))
            mask = np.zeros((size, size), dtype=bool)
            mask[y:y + side, x:x + side] = shape
            if all((o["mask"] & mask).sum() <= MAX_COVERED * o["mask"].sum() for o in objects):
                break
        else:
            continue  # no free place for this item
        for o in objects:
            o["mask"] &= ~mask
        canvas[mask] = pixels[shape]
        objects.append({"label": int(labels[source]), "source": source, "mask": mask})
    return np.clip(canvas + 0.5, 0, 255).astype(np.uint8), objects


def coco_annotation(obj: dict, ann_id: int, image_id: int) -> dict:
    """A COCO annotation from an object's mask: RLE segmentation, its area and bounding box."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(obj["mask"].astype(np.uint8)))
    box = [float(v) for v in mask_utils.toBbox(rle)]
    rle["counts"] = rle["counts"].decode("ascii")
    return {"id": ann_id, "image_id": image_id, "category_id": obj["label"] + 1, "bbox": box,
            "area": float(mask_utils.area(rle)), "segmentation": rle, "iscrowd": 0,
            "fashion_mnist_index": obj["source"]}


def write_split(folder: Path, split: str, n: int, items: np.ndarray, labels: np.ndarray, size: int, seed: int,
                max_items: int, categories: list[dict], progress: bool = False) -> None:
    """Canvases of one split as PNGs in folder/split/ and folder/split.json."""
    from PIL import Image

    (folder / split).mkdir(parents=True)
    images, annotations = [], []
    for index in range(n):
        rng = np.random.default_rng([seed, SPLIT_CODE[split], index])
        canvas, objects = compose_canvas(rng, items, labels, size, max_items)
        file_name = f"{index:06d}.png"
        Image.fromarray(canvas).save(folder / split / file_name)
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        annotations += [coco_annotation(o, len(annotations) + k + 1, image_id) for k, o in enumerate(objects)]
        if progress and (index + 1) % 500 == 0:
            print(f"{NAME} {split}: {index + 1}/{n} canvases", flush=True)
    source = f"fashion-mnist {SPLIT_SOURCE[split]}"
    data = {"info": {"description": f"{NAME} {split}: Fashion-MNIST {SPLIT_SOURCE[split]} images on {size}px canvases",
                     "source": source, "seed": seed},
            "images": images, "annotations": annotations, "categories": categories}
    (folder / f"{split}.json").write_text(json.dumps(data))


def parameters(train: int, val: int, size: int, seed: int, max_items: int) -> dict:
    return {"name": NAME, "version": 1, "train": train, "val": val, "size": size, "seed": seed, "max_items": max_items}


def make_fashion_scenes(out: str | Path | None = None, *, train: int = 2000, val: int = 500, size: int = 128,
                        seed: int = 0, max_items: int = 4, fashion_dir: str | Path | None = None,
                        progress: bool = False) -> tuple[Path, str]:
    """Generate fashion-scenes into `out` (default `default_folder()`); (folder, 'present' or 'generated').

    A folder already holding the same parameters (scenes.json) is kept as it is.
    """
    for option, value, low in (("train", train, 1), ("val", val, 1), ("size", size, 32), ("max_items", max_items, 1)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"invalid --{option.replace('_', '-')} {value!r}: at least {low}")
    out = Path(out).expanduser() if out is not None else default_folder()
    wanted = parameters(train, val, size, seed, max_items)
    manifest = out / "scenes.json"
    how = "generated"
    if manifest.is_file() and read_manifest(manifest) == wanted:
        damage = damaged(out, wanted)
        if damage is None:
            return out, "present"
        how = f"rebuilt ({damage})"
    if out.exists() and not manifest.is_file() and any(out.iterdir()):
        raise FileExistsError(f"{out}: exists and is not a {NAME} folder (no scenes.json); give another --out")
    fashion = fashion_mnist_root(fashion_dir, download=False)
    categories = [{"id": i + 1, "name": name, "supercategory": "fashion"} for i, name in enumerate(FASHION_MNIST_CLASSES)]
    tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for split, n in (("train", train), ("val", val)):
            images, labels = read_fashion_mnist(fashion, SPLIT_SOURCE[split])
            write_split(tmp, split, n, images[:, 0].numpy(), labels.numpy(), size, seed, max_items, categories, progress)
        (tmp / "scenes.json").write_text(json.dumps(wanted))
        _replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out, how


def read_manifest(path: Path) -> dict | None:
    """scenes.json's parameters, or None when it does not read (then the folder is generated again)."""
    try:
        return json.loads(path.read_text())
    except (ValueError, OSError):
        return None


def damaged(folder: Path, wanted: dict) -> str | None:
    """Why a folder whose scenes.json matches is not whole (a json that does not read or check, images missing),
    or None: checked before saying 'present', so that a damaged folder is generated again."""
    for split in ("train", "val"):
        path = folder / f"{split}.json"
        try:
            data = json.loads(path.read_text())
            images = data["images"]
            names = [image["file_name"] for image in images]
            if not isinstance(data["annotations"], list) or not isinstance(data["categories"], list):
                raise ValueError("annotations or categories are not lists")
        except (ValueError, OSError, KeyError, TypeError) as error:
            return f"{path}: does not read as the scenes' json ({one_line(error)})"
        if len(images) != wanted[split]:
            return f"{path}: {len(images)} images, not {wanted[split]}"
        missing = sum(not (folder / split / str(name)).is_file() for name in names)
        if missing:
            return f"{folder / split}: {missing} image file(s) missing"
    return None


def _replace_folder(new: Path, out: Path) -> None:
    """Put `new` at `out` by renames: an older folder there is moved aside first, then removed."""
    old = out.parent / f".{out.name}.{os.getpid()}.old"
    if out.exists():
        os.replace(out, old)
    os.replace(new, out)
    shutil.rmtree(old, ignore_errors=True)
