"""The check a COCO-format split gets when it is opened, so that bad data fails a run in its first seconds (with
every bad entry named in one line) instead of in a loader worker an epoch later.

Per split (`check_split`): image ids and category ids/names given twice; a `file_name` that is absolute or climbs
out of the image folder with `..` (nothing outside the folder the user gave is read); each image file's header
(PIL reads the header only: no pixel is decoded) for a missing or unreadable file, a size above `max_pixels` (or a
decompression bomb), and a size other than the json's `width`/`height` (after the EXIF orientation, as the loader
reads it); with `masks`, an object without a segmentation. What it learns (sizes, grayscale or not) picks the
channels and the detector's default input size (`default_sizes`).
"""

from __future__ import annotations

from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from resnet.data.folder import MAX_PIXELS, ORIENTATION, open_checked
from resnet.errors import one_line

GRAYSCALE_MODES = ("1", "L", "LA", "I", "F")  # and I;16*: read as one channel
LISTED = 20  # bad entries named in the one line; the rest are counted
SWAPPED = (5, 6, 7, 8)  # EXIF orientations that turn the image by 90 degrees
MIN_SIZE, MAX_SIZE = 800, 1333  # torchvision's defaults, for photographs
SMALL_SIDE = 320  # images whose median shorter side is below this keep their own scale


@dataclass
class SplitFacts:
    """What the check read from the headers: (width, height) and grayscale-or-not per image entry."""

    sizes: list[tuple[int, int]]
    grayscale: list[bool]


def image_entry(image: dict) -> str:
    return f"image id {image['id']} ({image['file_name']!r})"


def outside_folder(file_name: str) -> str | None:
    """Why a json `file_name` would read outside its image folder (absolute, or `..`), or None."""
    for kind in (PurePosixPath, PureWindowsPath):
        path = kind(file_name)
        if path.is_absolute() or path.drive or path.root:
            return "is an absolute path"
        if ".." in path.parts:
            return "climbs out of the image folder with '..'"
    return None


def read_header(path: Path, max_pixels: int) -> tuple[int, int, bool]:
    """(width, height, grayscale) of an image file as the loader will see it, from its header alone."""
    with open_checked(path, max_pixels=max_pixels, option="--max-pixels") as image:
        w, h = image.size
        header_exif = image.format != "PNG" or "exif" in image.info  # PIL decodes a whole PNG to look further
        if header_exif and image.getexif().get(ORIENTATION, 1) in SWAPPED:
            w, h = h, w
        return w, h, image.mode in GRAYSCALE_MODES or image.mode.startswith("I;16")


def duplicates(data: dict) -> list[str]:
    """Image ids, category ids and category names given twice, each naming both entries."""
    problems = []
    for key, kind, field in (("images", "image", "id"), ("categories", "category", "id"),
                             ("categories", "category", "name")):
        seen: dict = defaultdict(list)
        for i, entry in enumerate(data.get(key, [])):
            seen[entry[field]].append(i)
        for value, where in seen.items():
            if len(where) > 1:
                entries = " and ".join(f"{key}[{i}]" + (f" ({data[key][i]['file_name']!r})" if key == "images" else "")
                                       for i in where)
                problems.append(f"{kind} {field} {value!r} is given {len(where)} times: {entries}")
    return problems


def mask_problems(data: dict) -> list[str]:
    """With --masks: objects (not crowd regions) without a usable segmentation; one line if none has one."""
    objects = [(i, a) for i, a in enumerate(data.get("annotations", [])) if not a.get("iscrowd", 0)]
    if objects and not any(a.get("segmentation") for _, a in objects):
        return ["no annotation has a segmentation, so there are no masks to learn (--masks needs polygons or RLE "
                "in every annotation; train without --masks for boxes only)"]
    bad = []
    for i, ann in objects:
        seg = ann.get("segmentation")
        usable = isinstance(seg, dict) or (isinstance(seg, list) and seg and all(
            isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in seg))
        if not usable:
            bad.append(f"annotations[{i}] (id {ann['id']}, image id {ann['image_id']}) has segmentation {seg!r}, "
                       f"not a polygon or RLE mask (--masks)")
    return bad


def file_problems(images: list[dict], folder: Path, max_pixels: int) -> tuple[list[str], list, bool]:
    """(problems, (w, h, grayscale) per image or None, whether every problem is a missing file)."""
    def one(image: dict):
        why = outside_folder(image["file_name"])
        if why:
            return f"{image_entry(image)}: file_name {why}; give it relative to {folder}", None
        path = folder / image["file_name"]
        if not path.is_file():
            return f"{image_entry(image)}: no such file {path}", "missing"
        try:
            w, h, gray = read_header(path, max_pixels)
        except (ValueError, OSError) as error:
            return f"{image_entry(image)}: {one_line(error)}", None
        if (w, h) != (image["width"], image["height"]):
            return f"{image_entry(image)} is {w}x{h}, the json says {image['width']}x{image['height']}", (w, h, gray)
        return None, (w, h, gray)

    with ThreadPoolExecutor(max_workers=8) as pool:  # header reads wait on the disk, not the CPU
        answers = list(pool.map(one, images))
    problems = [p for p, _ in answers if p]
    missing = all(facts == "missing" for p, facts in answers if p)
    return problems, [facts if isinstance(facts, tuple) else None for _, facts in answers], missing


def check_split(data: dict, annotation_file: Path, folder: Path, *, masks: bool = False,
                max_pixels: int | None = None) -> SplitFacts:
    """Every bad entry of a split, named in one ValueError (FileNotFoundError when all are missing files)."""
    problems = duplicates(data)
    if masks:
        problems += mask_problems(data)
    found, facts, missing = file_problems(data.get("images", []), folder, max_pixels or MAX_PIXELS)
    problems += found
    if problems:
        listed = "; ".join(problems[:LISTED])
        more = f"; and {len(problems) - LISTED} more" if len(problems) > LISTED else ""
        head = f"{annotation_file}: " if len(problems) == 1 else f"{annotation_file}: {len(problems)} bad entries: "
        error = FileNotFoundError if missing and found == problems else ValueError
        raise error(f"{head}{listed}{more}")
    return SplitFacts([f[:2] for f in facts], [f[2] for f in facts])


def default_sizes(sizes: list[tuple[int, int]]) -> tuple[int, int]:
    """The detector's (min_size, max_size) for images of these sizes: torchvision's 800/1333 for photographs,
    and for small images (median shorter side under SMALL_SIDE) their own scale: the median shorter side, and a
    longer-side cap that squeezes none of them (torchvision would blow a 128 px image up to 800 px)."""
    if not sizes:
        return MIN_SIZE, MAX_SIZE
    shorter = sorted(min(w, h) for w, h in sizes)
    median = shorter[len(shorter) // 2]
    if median >= SMALL_SIDE:
        return MIN_SIZE, MAX_SIZE
    cap = max(-(-max(w, h) * median // min(w, h)) for w, h in sizes)
    return median, min(max(cap, median), MAX_SIZE)
