"""Detection as the training engine sees it (resnet/train/task.py): COCO-format data, a detector on one of our
networks, torchvision's summed losses, and COCOeval's box (and mask) AP on the validation split.

The engine is the classification one: run directory, config.json, metrics.jsonl, checkpoints, exact resume,
signals, lock and progress are the same; the best checkpoint is the one with the highest validation box AP.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from resnet.atomic import atomic_write
from resnet.data.folder import MAX_PIXELS
from resnet.detection.coco import build_detection_data
from resnet.detection.datacheck import MAX_SIZE, MIN_SIZE
from resnet.detection.evaluate import evaluate_detector
from resnet.detection.models import create_detector, detection_loss
from resnet.train import distributed, finetune
from resnet.train.recipes import Recipe

DETECTOR_FIELDS = ("head", "masks", "trainable_stages", "backbone_weights", "min_size", "max_size",
                   "max_pixels")  # config.json's "detector" entry (None: chosen from the data / the default)

# Sampling sized for the scenes' one to four objects per 128px canvas (torchvision's defaults are sized for COCO's
# many objects: 512 RoIs and 2,000 proposals per image); 5x faster training on a CPU with the same recall.
FEW_OBJECTS = {"box_batch_size_per_image": 64, "rpn_batch_size_per_image": 128, "rpn_pre_nms_top_n_train": 600,
               "rpn_post_nms_top_n_train": 300, "rpn_pre_nms_top_n_test": 300, "rpn_post_nms_top_n_test": 100}


def input_sizes(info, min_size: int | None, max_size: int | None) -> tuple[int, int]:
    """The detector's (min_size, max_size): the ones given, else the data's (`DetectionDataInfo`); a max_size
    below min_size is raised to it, a non-positive one refused."""
    for name, value in (("--min-size", min_size), ("--max-size", max_size)):
        if value is not None and value < 1:
            raise ValueError(f"{name} {value}: give a positive number of pixels")
    chosen_min = min_size or info.min_size or MIN_SIZE
    chosen_max = max_size or (max(info.max_size or MAX_SIZE, chosen_min) if min_size is None else
                              max(round(chosen_min * 1333 / 800), chosen_min))
    if chosen_max < chosen_min:
        raise ValueError(f"--max-size {chosen_max} is smaller than --min-size {chosen_min}")
    return chosen_min, chosen_max


class DetectionTask:
    """Images with boxes (and masks) to a Faster/Mask R-CNN on `backbone` (see train/task.py for the interface)."""

    name = "detection"

    def __init__(self, backbone: str, data: str, data_dir: str | None, recipe: Recipe, model_options: dict,
                 detector: dict) -> None:
        self.backbone, self.data, self.data_dir, self.recipe = backbone, data, data_dir, recipe
        self.model_options, self.detector = dict(model_options), dict(detector)

    def setup(self, dist: distributed.Dist, device: torch.device) -> None:
        self.device = device
        per_process = self.recipe.batch_size // dist.world_size
        self.train_loader, self.val_loaders, self.info = build_detection_data(
            self.data, self.data_dir, per_process, seed=self.recipe.seed, rank=dist.rank,
            world_size=dist.world_size, masks=bool(self.detector.get("masks")), num_workers=self.recipe.num_workers,
            device=device, max_pixels=self.detector.get("max_pixels") or MAX_PIXELS)
        self.sizes = input_sizes(self.info, self.detector.get("min_size"), self.detector.get("max_size"))

    def build_model(self) -> tuple[nn.Module, list[str]]:
        few = FEW_OBJECTS if self.data == "fashion-scenes" else {}
        options = {**self.info.detector_options(), **few, **self.model_options}
        options.update(min_size=self.sizes[0], max_size=self.sizes[1])
        model = create_detector(self.backbone, self.detector.get("head", "c4"), bool(self.detector.get("masks")),
                                backbone_weights=self.detector.get("backbone_weights"),
                                trainable_stages=self.detector.get("trainable_stages"), **options)
        model.meta = {**model.meta, "dataset": self.info.name}
        return model, []

    def model_ready(self, net: nn.Module, resumed: tuple | None) -> None:
        pass  # the detector normalises its own input (GeneralizedRCNNTransform) and freezes its own stages

    def param_groups(self, net: nn.Module) -> list:
        return finetune.param_groups(net, self.recipe)

    def summary(self) -> str:
        spec = self.detector
        return f"{spec.get('head', 'c4')} {'Mask' if spec.get('masks') else 'Faster'} R-CNN, " \
               f"{self.info.num_classes - 1} classes"

    def describe(self) -> list[str]:
        sizes = ", ".join(f"{n} {split}" for split, n in self.info.sizes.items())
        side = f", {self.info.image_size}px" if self.info.image_size else ""
        how = "given" if self.detector.get("min_size") else "chosen from the images' sizes"
        return [f"input: {self.info.name} from {self.info.root} ({sizes} images{side}, {self.info.channels} "
                f"channel(s))",
                f"detector input: shorter side {self.sizes[0]} px, longer side at most {self.sizes[1]} px ({how}; "
                f"--min-size/--max-size to set it)"]

    def train_step(self, model: nn.Module, batch, step: int, autocast: Callable) -> tuple[torch.Tensor, torch.Tensor]:
        images, targets = batch
        images = [image.to(self.device, non_blocking=True) for image in images]
        targets = [{k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in t.items()}
                   for t in targets]
        with autocast():
            loss, _ = detection_loss(model, images, targets)
        n = torch.tensor(len(images), dtype=torch.float64, device=self.device)
        stats = torch.stack([loss.detach().double() * n, torch.zeros_like(n), n])
        return loss, stats

    def evaluate(self, model: nn.Module, final: bool, autocast: Callable) -> dict:
        """COCO AP per split; evaluations during training score `eval_subset` images, the `final` one all."""
        row = {}
        for key, loader in self.val_loaders.items():
            metrics = evaluate_detector(model, loader, device=self.device,
                                        limit=None if final else self.recipe.eval_subset)
            row.update({f"{key}_{k}": None if v != v else v for k, v in metrics.items()})  # NaN (no such boxes): null
        return row

    def selection_error(self, row: dict) -> float:
        return 1 - row["val_box_AP"]

    def window_row(self, loss_sum: float, wrong: float, count: float) -> dict:
        return {"train_loss": loss_sum / max(count, 1)}

    def row_summary(self, row: dict) -> list[str]:
        parts = [f"train loss {row['train_loss']:.3f}", f"val box AP {100 * row['val_box_AP']:.1f}",
                 f"AP50 {100 * row['val_box_AP50']:.1f}"]
        if "val_mask_AP" in row:
            parts.append(f"mask AP {100 * row['val_mask_AP']:.1f}")
        return parts

    def plot(self, rows: list[dict], path: Path, title: str) -> None:
        plot_detection_curves(rows, path, title)


def plot_detection_curves(rows: list[dict], path: Path, title: str) -> Path:
    """Training loss and validation AP (box, and mask) against iterations, written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    marker = "o" if len(rows) < 3 else None
    left.plot(steps, [r["train_loss"] for r in rows], marker=marker)
    left.set(xlabel="iterations", ylabel="training loss (sum of the R-CNN losses)")
    for key, label in (("val_box_AP", "box AP"), ("val_box_AP50", "box AP50"), ("val_mask_AP", "mask AP")):
        if any(key in r for r in rows):
            right.plot(steps, [100 * r.get(key, float("nan")) for r in rows], marker=marker, label=label)
    right.set(xlabel="iterations", ylabel="validation AP (%)")
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return Path(path)
