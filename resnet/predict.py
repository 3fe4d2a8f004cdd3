"""Top-k classes of image files under a trained checkpoint, with the checkpoint's own test preprocessing.

Each image is decoded upright (EXIF orientation) and goes through the test protocol the checkpoint
was trained for: a small-style (CIFAR-size) net sees the image fitted to its training size (shorter
side resized, centre crop), an ImageNet-style net the paper's resize (256 for 224 crops) and centre
crop. Images that would decode to more than `MAX_PIXELS` pixels are refused with one line.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torchvision.transforms.v2.functional import pil_to_tensor

from resnet.data.folder import MAX_PIXELS, decode_image, image_files, open_checked
from resnet.inference.classifier import Classifier, torch_engine


def gather_images(inputs: Sequence[str | Path]) -> list[Path]:
    """The image files named: files as given, folders by every image under them (sorted)."""
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = image_files(item)
            if not found:
                raise FileNotFoundError(f"{item}: no image files in this folder")
            files += map(Path, found)
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such image file or folder")
    return files


def read_image(path: str | Path, channels: int = 3, min_side: int | None = None,
               max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """A uint8 CHW tensor from an image file (upright, 16-bit scaled), or a one-line error naming the file."""
    return pil_to_tensor(decode_image(path, min_side, "L" if channels == 1 else "RGB", max_pixels))


def _check_headers(files: list[Path], min_side: int | None, max_pixels: int) -> tuple[list[Path], list[dict]]:
    """(files whose header reads and is not too large, [{image, error}] of the others), before any decoding work."""
    readable, skipped = [], []
    for path in files:
        try:
            open_checked(path, min_side, max_pixels).close()
        except (ValueError, FileNotFoundError) as error:  # both name the file
            skipped.append({"image": str(path), "error": str(error)})
        else:
            readable.append(path)
    return readable, skipped


@torch.no_grad()
def predict(classifier: Classifier | nn.Module, images: Sequence[str | Path], top: int = 5, protocol: str = "center",
            device: str = "cpu", batch_size: int = 32, max_pixels: int = MAX_PIXELS, amp: bool | None = None,
            skipped: list[dict] | None = None) -> list[dict]:
    """For each readable image file (or every image in a folder): its top classes as [{index, class, probability}].

    `classifier` is a `resnet.inference.Classifier` (its engine and protocol decide; `protocol`, `device` and
    `amp` are ignored), or a loaded torch network, wrapped in one with `protocol`, `device` and `amp` (False:
    exact fp32, `--no-amp`; None: the device's fast path). Unreadable files (not an image, truncated, too large)
    are left out as `eval` leaves them out: appended to `skipped` as {image, error} when it is a list, else
    warned about by name; a ValueError says so when no file was readable.
    """
    import sys

    from resnet.evaluate.memory import batch_that_fits, views_bytes

    if isinstance(classifier, nn.Module):
        classifier = Classifier(classifier, torch_engine(device, amp), device, protocol, amp)
    if not classifier.has_mean:
        print("resnet predict: warning: the checkpoint has no input mean; using the image as it is", file=sys.stderr)
    min_side = classifier.protocol.min_side
    files = gather_images(images)
    readable, bad = _check_headers(files, min_side, max_pixels)
    results: list[dict] = []
    pending: list[tuple[Path, object]] = []  # (file, its prepared views), scored `step` at a time
    step = batch_size

    def score_pending() -> None:
        probs = classifier.probabilities([v for _, v in pending])
        results.extend({"image": str(path), "top": classifier.top(p, top)} for (path, _), p in zip(pending, probs))
        pending.clear()

    for path in readable:
        try:
            view = classifier.prepare(read_image(path, classifier.channels, min_side, max_pixels))
        except ValueError as error:  # the header was fine, the data are not (a truncated file)
            bad.append({"image": str(path), "error": str(error)})
            continue
        if not results and not pending:  # the first image: fewer per batch if a full batch would not fit in memory
            step = batch_that_fits(batch_size, views_bytes(view), classifier.device)
        pending.append((path, view))
        if len(pending) == step:
            score_pending()
    if pending:
        score_pending()
    order = {str(path): i for i, path in enumerate(files)}
    bad.sort(key=lambda s: order[s["image"]])
    if not results:
        if len(bad) == 1:
            raise ValueError(bad[0]["error"])
        raise ValueError(f"none of the {len(files)} image files could be read (the first: {bad[0]['error']})")
    if skipped is not None:
        skipped += bad
    else:
        for item in bad:
            warnings.warn(f"skipped unreadable image: {item['error']}", stacklevel=3)  # past no_grad's wrapper
    return results


def format_predictions(results: list[dict]) -> str:
    """One block per image: rank, probability, class name."""
    lines = []
    for r in results:
        lines.append(r["image"])
        lines += [f"  {k + 1}. {t['probability']:7.2%}  {t['class']}" for k, t in enumerate(r["top"])]
    return "\n".join(lines)


def predictions_csv(results: list[dict]) -> str:
    """CSV with one row per (image, rank): image, rank, index, class, probability."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "rank", "index", "class", "probability"])
    for r in results:
        for rank, t in enumerate(r["top"], 1):
            writer.writerow([r["image"], rank, t["index"], t["class"], f"{t['probability']:.6g}"])
    return buffer.getvalue()


def write_predictions(results: list[dict], out: str | Path) -> Path:
    """Write results atomically as JSON (.json) or CSV (.csv), chosen by the file's suffix."""
    from resnet.atomic import atomic_write_text

    out = Path(out)
    if out.suffix.lower() == ".json":
        return atomic_write_text(out, json.dumps(results, indent=2))
    if out.suffix.lower() == ".csv":
        return atomic_write_text(out, predictions_csv(results))
    raise ValueError(f"--out {out}: give a .json or .csv file name")
