"""Detections on image files under a detector checkpoint: boxes, class names, scores (and masks as RLE).

Images are read upright (EXIF) in the detector's channels and given to it whole: its own transform
(GeneralizedRCNNTransform) resizes and normalises them, and its boxes come back in the image's pixels.
Results are JSON ({"image", "detections": [{"box": [x1, y1, x2, y2], "category_id", "class", "score",
"mask": {"size", "counts"}}]}) or CSV (one row per detection); "category_id" is the training json's own id of
the class (e.g. COCO's 90 for toothbrush, not the detector's contiguous label), so that results go to COCO tools;
`draw` writes each image with its boxes, class names and scores (torchvision.utils.draw_bounding_boxes) and
masks (draw_segmentation_masks).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from resnet.atomic import atomic_write
from resnet.data.folder import MAX_PIXELS
from resnet.detection.evaluate import encode_masks
from resnet.predict import gather_images, read_image, write_json_or_csv


@torch.no_grad()
def predict_detections(model: nn.Module, images: Sequence[str | Path], *, device: str = "cpu",
                       score_threshold: float = 0.5, max_pixels: int = MAX_PIXELS,
                       keep_masks: bool = False) -> list[dict]:
    """For each image file (or every image in a folder): its detections scoring at least `score_threshold`.

    `keep_masks` also keeps the soft masks as tensors under "_masks" (for drawing; not JSON).
    """
    channels = model.spec["net_options"].get("in_channels", 3)
    model.eval()
    return [detect(model, read_image(path, channels, max_pixels=max_pixels), str(path), device=device,
                   score_threshold=score_threshold, keep_masks=keep_masks) for path in gather_images(images)]


def public(results: list[dict]) -> list[dict]:
    """The results without the tensors kept for drawing."""
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in results]


def format_detections(results: list[dict]) -> str:
    """One block per image: score, class, box."""
    lines = []
    for r in results:
        lines.append(f"{r['image']}: {len(r['detections'])} detection(s)")
        lines += [f"  {d['score']:6.1%}  {d['class']:<14} (id {d['category_id']}) "
                  f"[{', '.join(f'{v:.1f}' for v in d['box'])}]"
                  for d in r["detections"]]
    return "\n".join(lines)


def detections_csv(results: list[dict]) -> str:
    """CSV, one row per detection: image, rank, category_id, class, score, x1, y1, x2, y2, mask_rle."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "rank", "category_id", "class", "score", "x1", "y1", "x2", "y2", "mask_rle"])
    for r in results:
        for rank, d in enumerate(r["detections"], 1):
            rle = d.get("mask", {}).get("counts", "")
            writer.writerow([r["image"], rank, d["category_id"], d["class"], d["score"], *d["box"], rle])
    return buffer.getvalue()


def write_detections(results: list[dict], out: str | Path) -> Path:
    """Results written atomically as JSON (.json) or CSV (.csv)."""
    return write_json_or_csv(out, public(results), lambda: detections_csv(results))


def draw_detections(results: list[dict], folder: str | Path) -> list[Path]:
    """Each image with its boxes, 'class score' labels and masks, as folder/<stem>.png (atomic writes)."""
    from PIL import Image
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    folder = Path(folder)
    written = []
    for r in results:
        canvas = r["_image"]
        canvas = canvas.expand(3, -1, -1).contiguous() if canvas.shape[0] == 1 else canvas
        masks = r.get("_masks")
        if masks is not None and len(masks):
            canvas = draw_segmentation_masks(canvas, masks[:, 0] > 0.5, alpha=0.4)
        if r["detections"]:
            boxes = torch.tensor([d["box"] for d in r["detections"]], dtype=torch.float32)
            labels = [f"{d['class']} {d['score']:.2f}" for d in r["detections"]]
            canvas = draw_bounding_boxes(canvas, boxes, labels=labels, colors="red", width=2)
        path = folder / f"{Path(r['image']).stem}.png"
        pixels = canvas.permute(1, 2, 0).numpy()
        written.append(atomic_write(path, lambda tmp, rgb=pixels: Image.fromarray(rgb).save(tmp, format="PNG")))
    return written


@torch.no_grad()
def detect(model: nn.Module, image: torch.Tensor, name: str, *, device: str = "cpu", score_threshold: float = 0.5,
           keep_masks: bool = False) -> dict:
    """The detections of one decoded uint8 CHW image as {"image": name, "detections": [...]}: the one path of
    `predict_detections` and of the server (resnet/serve), so both answer alike."""
    names = model.meta["class_names"]
    ids = model.meta.get("category_ids") or list(range(1, len(names) + 1))  # the dataset's own category ids
    output = model([image.float().div(255).to(device)])[0]
    keep = output["scores"] >= score_threshold
    output = {k: v[keep].cpu() for k, v in output.items()}
    rles = encode_masks(output["masks"]) if "masks" in output else [None] * len(output["scores"])
    detections = []
    for box, label, score, rle in zip(output["boxes"].tolist(), output["labels"].tolist(),
                                      output["scores"].tolist(), rles):
        entry = {"box": [round(v, 2) for v in box], "category_id": int(ids[label - 1]),
                 "class": str(names[label - 1]), "score": round(float(score), 5)}
        if rle is not None:
            entry["mask"] = rle
        detections.append(entry)
    result = {"image": name, "detections": detections}
    if keep_masks:
        result["_image"], result["_masks"] = image, output.get("masks")
    return result
