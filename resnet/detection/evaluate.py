"""COCO's own metrics for a detector: pycocotools' COCOeval on boxes (and masks), AP over IoU .5:.95.

`evaluate_detector(model, loader_or_dataset)` runs an eval-mode detector over a CocoDetection split (or a
loader over one), turns its outputs into COCO results (boxes as [x, y, w, h] in the image's pixels, masks
thresholded at 0.5 and RLE-encoded) and returns {"box_AP", "box_AP50", "box_AP75", "box_APs", "box_APm",
"box_APl"} (plus "mask_*" for a Mask R-CNN), each on 0..1 as COCOeval's first six numbers; a size range
with no ground truth gives NaN (COCOeval's -1). The paper's COCO numbers are AP50 ("mAP@.5") and AP
("mAP@[.5,.95]"). `coco_metrics(coco_gt, results)` does the scoring alone, for outputs from anywhere.
"""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import torch
from torch import nn

from resnet.detection.coco import CocoDetection, collate_detection
from resnet.train.distributed import all_gather_lists, world_size

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
IOU_TYPES = {"box": "bbox", "mask": "segm"}


def coco_metrics(coco_gt, results: list[dict], kinds: tuple[str, ...] = ("box",),
                 image_ids: list[int] | None = None) -> dict[str, float]:
    """COCOeval's AP, AP50, AP75, APs/APm/APl for each kind ("box", "mask"), keyed "box_AP", ...

    No results at all score 0 (pycocotools cannot load an empty list); `image_ids` limits the images scored.
    """
    from pycocotools.cocoeval import COCOeval

    metrics = {}
    for kind in kinds:
        if not results:
            metrics.update({f"{kind}_{m}": 0.0 for m in METRICS})
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = coco_gt.loadRes([dict(r) for r in results])  # loadRes adds fields to what it gets
            evaluator = COCOeval(coco_gt, coco_dt, IOU_TYPES[kind])
            if image_ids is not None:
                evaluator.params.imgIds = list(image_ids)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        for name, value in zip(METRICS, evaluator.stats[:6]):
            metrics[f"{kind}_{name}"] = float(value) if value >= 0 else math.nan
    return metrics


def to_coco_results(output: dict[str, torch.Tensor], image_id: int, category_ids: list[int],
                    masks: bool = False, mask_threshold: float = 0.5) -> list[dict]:
    """One image's detector output (boxes x1y1x2y2, labels 1..K, scores[, masks [N,1,H,W]]) as COCO results."""
    boxes = output["boxes"].detach().cpu().float()
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    labels, scores = output["labels"].tolist(), output["scores"].tolist()
    results = [{"image_id": int(image_id), "category_id": int(category_ids[label - 1]), "bbox": box,
                "score": float(score)} for box, label, score in zip(xywh, labels, scores)]
    if masks:
        for result, rle in zip(results, encode_masks(output["masks"], mask_threshold)):
            result["segmentation"] = rle
    return results


def encode_masks(masks: torch.Tensor, threshold: float = 0.5) -> list[dict]:
    """Soft masks [N,1,H,W] (or [N,H,W]) as COCO RLE dicts ({"size": [h, w], "counts": str})."""
    from pycocotools import mask as mask_utils

    if masks.dim() == 4:
        masks = masks[:, 0]
    binary = (masks.detach().cpu() > threshold).numpy().astype(np.uint8)
    rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0))) if len(binary) else []
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return list(rles)


def coco_dataset_of(source):
    """The CocoDetection behind a dataset, a Subset or a loader (ours, or a DataLoader)."""
    seen = source
    for _ in range(6):
        if isinstance(seen, CocoDetection):
            return seen
        seen = getattr(seen, "dataset", None) or getattr(seen, "loader", None)
        if seen is None:
            break
    raise ValueError(f"evaluate_detector needs a CocoDetection split or a loader over one, not {type(source).__name__}")


def _batches(source, batch_size: int):
    """(images, targets) batches from a loader, or from a dataset (no __iter__) read in order."""
    if hasattr(source, "__iter__"):
        yield from source
        return
    for start in range(0, len(source), batch_size):
        yield collate_detection([source[i] for i in range(start, min(start + batch_size, len(source)))])


@torch.no_grad()
def evaluate_detector(model: nn.Module, loader_or_dataset, *, device: str | torch.device = "cpu",
                      batch_size: int = 4, progress: bool = False, limit: int | None = None) -> dict[str, float]:
    """Box (and mask) AP of `model` on a COCO-format split, from pycocotools' COCOeval.

    The model runs in eval mode (its mode is restored after); `limit` scores only the first N images.
    With masks, the values have "mask_" keys beside the "box_" ones; "images" counts the images scored.
    Under torchrun each process runs its shard of the loader and every process scores all of them together.
    """
    if limit is not None:
        limit = -(-limit // world_size())  # each process its share of the N

    dataset = coco_dataset_of(loader_or_dataset)
    masks = bool(model.roi_heads.has_mask())
    was_training = model.training
    model.eval()
    results, image_ids = [], []
    try:
        for images, targets in _batches(loader_or_dataset, batch_size):
            if limit is not None:
                images, targets = images[:limit - len(image_ids)], targets[:limit - len(image_ids)]
                if not images:
                    break
            outputs = model([image.to(device) for image in images])
            for output, target in zip(outputs, targets):
                image_id = int(target["image_id"])
                image_ids.append(image_id)
                results += to_coco_results(output, image_id, dataset.category_ids, masks)
            if progress:
                print(f"\revaluated {len(image_ids)}/{len(dataset)} images", end="", flush=True)
    finally:
        model.train(was_training)
    if progress:
        print()
    results, image_ids = all_gather_lists(results), all_gather_lists(image_ids)
    metrics = coco_metrics(dataset.coco, results, ("box", "mask") if masks else ("box",), image_ids)
    metrics["images"] = len(image_ids)
    return metrics
