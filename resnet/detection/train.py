"""`train_detector()`: a detection run on the training engine, the same run directory as classification's
(config.json with `"task": "detection"`, metrics.jsonl, curves.png, checkpoints/, exact resume, signals, lock)."""

from __future__ import annotations

from pathlib import Path

from resnet.checkpoint import has_checkpoint
from resnet.detection.models import HEADS
from resnet.detection.task import DETECTOR_FIELDS, DetectionTask
from resnet.train.loop import new_config, read_config, recipe_from_config, run
from resnet.train.recipes import Recipe, get_recipe


def train_detector(backbone: str | None = None, data: str | None = None, *, head: str = "c4", masks: bool = False,
                   trainable_stages: int | None = None, backbone_weights: str | Path | None = None,
                   recipe: Recipe | None = None, out: str | Path | None = None, data_dir: str | None = None,
                   resume: str | Path | None = None, model_options: dict | None = None,
                   progress: bool | None = None, stop_after: int | None = None, overwrite: bool = False,
                   min_size: int | None = None, max_size: int | None = None, max_pixels: int | None = None) -> dict:
    """Train a `head` detector ("c4" as the paper, or "fpn"; Mask R-CNN with `masks`) on `backbone` with COCO-format
    `data` ("fashion-scenes", or "coco" with `data_dir`); returns the last evaluation row (val_box_AP, ...).

    `backbone_weights` (a classification run or checkpoint of ours, a `resnet weights` name, a torchvision/timm
    file) freezes BN and trains the last `trainable_stages` stages; `resume` continues a detection run directory.
    `min_size`/`max_size`: the detector's input scale (default: chosen from the images' sizes; saved in the
    checkpoint); `max_pixels`: the largest image read (default resnet.data.folder.MAX_PIXELS).
    """
    if resume is not None:
        run_dir, config = read_config(Path(resume), out, task="detection")
        recipe = recipe_from_config(config, run_dir)
    else:
        if head not in HEADS:
            raise ValueError(f"invalid --head {head!r}; allowed: {', '.join(HEADS)}")
        run_dir, config, recipe = new_config(backbone, data, recipe or get_recipe("detection"), out, data_dir,
                                             model_options, None, name=f"{head}-{backbone}-{data}")
        config = {"task": "detection", **config, "detector": {
            "head": head, "masks": bool(masks), "trainable_stages": trainable_stages,
            "backbone_weights": str(backbone_weights) if backbone_weights is not None else None,
            "min_size": min_size, "max_size": max_size, "max_pixels": max_pixels}}
    detector = {k: config["detector"].get(k) for k in DETECTOR_FIELDS}

    def make_task(recipe: Recipe) -> DetectionTask:
        return DetectionTask(config["model"], config["data"], config.get("data_dir"), recipe,
                             config["model_options"], detector)

    return run(make_task, config, run_dir, recipe, fresh=resume is None,
               restore=resume is not None and has_checkpoint(run_dir / "checkpoints"), progress=progress,
               stop_after=stop_after, overwrite=overwrite)
