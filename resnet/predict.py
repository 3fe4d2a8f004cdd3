"""Top-k classes of single image files under a trained checkpoint (center crop by default)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from resnet.evaluate.preprocess import input_norm
from resnet.evaluate.protocols import get_protocol


def read_image(path: str | Path, channels: int = 3) -> torch.Tensor:
    """A uint8 CHW tensor from an image file, or a one-line error naming the file."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        reason = "not an image PIL can read" if isinstance(e, UnidentifiedImageError) else str(e).splitlines()[0]
        raise ValueError(f"{path}: {reason}") from None
    from torchvision.transforms.v2 import functional as TF

    return TF.pil_to_tensor(image)


def model_style(model: nn.Module) -> str:
    """"small" (CIFAR-size input, no resize) or "imagenet" from the checkpoint's metadata."""
    meta = getattr(model, "meta", {}) or {}
    return meta.get("style") or ("small" if getattr(model.spec, "family", "") == "cifar" else "imagenet")


@torch.no_grad()
def predict(model: nn.Module, images: Sequence[str | Path], top: int = 5, protocol: str = "center",
            device: str = "cpu") -> list[dict]:
    """For each image file: its top classes as [{index, class, probability}] (best first)."""
    meta = getattr(model, "meta", {}) or {}
    if getattr(model, "input_mean", None) is None:
        print("resnet predict: warning: the checkpoint has no input mean; using the image as it is", file=sys.stderr)
    norm = input_norm(model).to(device)
    chosen = get_protocol(protocol, model_style(model), meta.get("image_size"))
    names = meta.get("class_names") or meta.get("classes")
    channels = model.conv1.in_channels
    tensors = [read_image(path, channels) for path in images]  # every file checked before any work
    results = []
    for path, image in zip(images, tensors):
        views = chosen.prepare(image)
        batch = [views] if isinstance(views, list) else views[None]
        probs = chosen.scores(model, norm, batch, device)[0].cpu()
        values, indices = probs.topk(min(top, probs.numel()))
        results.append({"image": str(path), "top": [
            {"index": int(i), "class": str(names[i]) if names and i < len(names) else str(int(i)),
             "probability": float(p)} for p, i in zip(values, indices)]})
    return results


def format_predictions(results: list[dict]) -> str:
    """One block per image: rank, probability, class name."""
    lines = []
    for r in results:
        lines.append(r["image"])
        lines += [f"  {k + 1}. {t['probability']:7.2%}  {t['class']}" for k, t in enumerate(r["top"])]
    return "\n".join(lines)
