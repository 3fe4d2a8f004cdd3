"""Classification, the paper's task, as the engine sees it: data, network, loss, top-1/top-5 evaluation.

The modern recipe's parts live here too, each off in the paper's recipes: label smoothing, mixup/cutmix and
random erasing on the batch (resnet/data/batch_augment.py), and test-time views (flip, shifts) in evaluation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from resnet import precision, strictjson
from resnet.atomic import atomic_write_text
from resnet.data import dataset_info, get_dataset, load_tensors, pixel_mean
from resnet.data.batch_augment import BatchMix, low_resolution, random_erase
from resnet.data.datasets import TREES, describe_input, held_out_splits, protocol_options
from resnet.data.info import DatasetInfo
from resnet.data.loaders import TTA_VIEWS, TensorLoader, build_loader, tta_view
from resnet.data.sampling import balanced_sample, balanced_subset
from resnet.data.transforms import test_transform, train_transform
from resnet.evaluate.confusion import plot_confusion
from resnet.evaluate.metrics import confusion_counts, per_class, topk_errors
from resnet.models import build_model
from resnet.train import distributed, finetune
from resnet.train.curves import plot_curves
from resnet.train.progress import error_parts
from resnet.train.recipes import Recipe


def make_data(data: str, data_dir: str | None, recipe: Recipe, dist: distributed.Dist, device: torch.device,
              download: bool):
    """Training loader, held-out loaders by name ('val', and 'test' when the split is held out) for the evaluations
    during training (a `--eval-subset` sample) and for the final one (every held-out image), info, mean."""
    options = protocol_options(data, recipe.style, recipe.image_size)
    info = dataset_info(data, data_dir, download=download, **options)
    mean = pixel_mean(data, data_dir, download=download, **options)
    use_tensors = info.style == "small" and data not in TREES and recipe.device_loader != "off"
    if recipe.device_loader == "on" and not use_tensors:
        raise ValueError(f"--device-loader on needs cifar10, cifar100, fashion-mnist or synthetic; {data!r} is read "
                         f"from files")
    split_options = {"data_dir": data_dir, "download": download, "val_split": recipe.val_split, "seed": recipe.seed,
                     **options}
    make = _tensor_loaders if use_tensors else _file_loaders
    train, evals, finals, info = make(data, info, mean, recipe, dist, device, split_options)
    return train, evals, finals, info, mean


def _tensor_loaders(data, info, mean, recipe, dist, device, split_options):
    """Small datasets held as one uint8 tensor on the device, cropped and flipped per batch there."""
    per_process = recipe.batch_size // dist.world_size
    common = {"seed": recipe.seed, "rank": dist.rank, "world_size": dist.world_size, "device": device}
    images, labels, info = load_tensors(data, "train", **split_options)
    if recipe.subset:
        keep = balanced_sample(labels, recipe.subset, recipe.seed)
        images, labels = images[keep], labels[keep]
    train = TensorLoader(images, labels, mean, per_process, train=True, pad=recipe.crop_pad, **common)
    evals, finals = {}, {}
    for key, split in held_out_splits(data, recipe.val_split).items():
        images, labels, _ = load_tensors(data, split, **split_options)
        finals[key] = evals[key] = TensorLoader(images, labels, mean, per_process, train=False, **common)
        if recipe.eval_subset and recipe.eval_subset < len(labels):
            keep = balanced_sample(labels, recipe.eval_subset, recipe.seed)
            evals[key] = TensorLoader(images[keep], labels[keep], mean, per_process, train=False, **common)
    return train, evals, finals, info


def _file_loaders(data, info, mean, recipe, dist, device, split_options):
    """Image files decoded and augmented per image in DataLoader workers."""
    per_process = recipe.batch_size // dist.world_size
    workers = {"num_workers": recipe.num_workers, "device": device, "seed": recipe.seed, "rank": dist.rank,
               "world_size": dist.world_size}
    dataset = get_dataset(data, "train", transform=train_transform(info, mean, recipe.crop_pad),
                          **split_options)
    info = dataset.info
    train = build_loader(balanced_subset(dataset, recipe.subset, recipe.seed), per_process, train=True, **workers)
    evals, finals = {}, {}
    for key, split in held_out_splits(data, recipe.val_split).items():
        held = get_dataset(data, split, transform=test_transform(info, mean), **split_options)
        finals[key] = build_loader(held, per_process, train=False, **workers)
        sample = balanced_subset(held, recipe.eval_subset, recipe.seed)
        evals[key] = finals[key] if sample is held else build_loader(sample, per_process, train=False, **workers)
    return train, evals, finals, info


def make_model(model_name: str, info, mean: torch.Tensor, options: dict) -> nn.Module:
    options = {"num_classes": info.num_classes, "in_channels": info.channels, **options}
    model = build_model(model_name, **options)
    model.meta = {"classes": list(info.classes), "class_names": list(info.class_names), "dataset": info.name,
                  "image_size": info.image_size, "style": info.style}
    model.input_mean = mean
    return model


# ----------------------------------------------------------------------------- evaluation

def class_scores(model: nn.Module, x: torch.Tensor, autocast: Callable, tta: str = "none",
                 offset: torch.Tensor | None = None) -> torch.Tensor:
    """Logits; with test-time views (`tta`: "flip", "flip-shift", see TTA_VIEWS) the log of their mean softmax
    (the same cross-entropy and ranking as those averaged probabilities). Inputs are normalised images; `offset`
    (mean / std) turns them back into raw ones for the views, so that a view is the normalised view of the image
    even with a per-pixel mean and black pixels are what shifts in. One view at a time goes through the net: a
    CPU runs a batch of V*B images much slower per image than V batches of B."""
    views = TTA_VIEWS[tta]
    if len(views) == 1:
        with autocast():
            return model(x).float()
    m = 0 if offset is None else offset.to(x.device)
    raw, probs = x + m, 0
    for view in views:
        with autocast():
            probs = probs + model(tta_view(raw, view) - m).float().softmax(1)
    return (probs / len(views)).clamp_min(1e-12).log()


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, autocast, tta: str = "none",
             offset: torch.Tensor | None = None, confusion: list | None = None) -> dict:
    """Loss, top-1 and top-5 error over a loader (summed over all processes); the confusion matrix (true class x
    top-1 prediction, a list of rows) is appended to `confusion` when it is a list."""
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, top1 wrong, top5 wrong, count
    counts = None
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        scores = class_scores(model, x, autocast, tta, offset)
        totals += _batch_stats(scores, y)
        if confusion is not None:
            batch = confusion_counts(scores, y, scores.shape[1])
            counts = batch if counts is None else counts + batch
    model.train()
    loss, wrong1, wrong5, n = distributed.all_reduce_sum(totals).tolist()
    if confusion is not None and counts is not None:
        confusion.append(distributed.all_reduce_sum(counts.double()).long().tolist())
    return {"loss": loss / n, "top1_error": wrong1 / n, "top5_error": wrong5 / n, "images": int(n)}


def _batch_stats(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[loss sum, top-1 wrong, top-5 wrong, count] of one batch, kept on the device (no sync: the count is a fill,
    not torch.tensor(n, device=...), which copies from the host and syncs; found by sync debug mode on an H200)."""
    errors = topk_errors(logits, y)
    loss = F.cross_entropy(logits, y, reduction="sum")
    return torch.stack([loss.double(), errors[1].sum().double(), errors[5].sum().double(),
                        torch.full((), len(y), dtype=torch.float64, device=y.device)])


# ----------------------------------------------------------------------------- the task

def check_sizes(recipe: Recipe, info: DatasetInfo) -> None:
    """Refuse size settings that cannot do anything on these images: a --low-res-size not below the input side
    (progressive resizing would train at full size), a --crop-pad at or above it (crops could be all padding)."""
    side = info.image_size
    if recipe.low_res_size is not None and recipe.low_res_size >= side:
        raise ValueError(f"--low-res-size {recipe.low_res_size}: not smaller than the {info.name} input "
                         f"({side} px), so progressive resizing would do nothing; give a smaller side")
    if info.style == "small" and recipe.crop_pad >= side:
        raise ValueError(f"--crop-pad {recipe.crop_pad}: at or above the {info.name} image size ({side} px), so a "
                         f"random crop could be all padding; give less than {side} (the paper: 4)")


class ClassificationTask:
    """Images to class scores, trained with cross-entropy and scored by top-1/top-5 error (see train/task.py)."""

    name = "classification"

    def __init__(self, model_name: str, data: str, data_dir: str | None, recipe: Recipe, model_options: dict, *,
                 download: bool = False, pretrained=None, init_notes: list[str] | None = None,
                 from_init: bool = False) -> None:
        """`pretrained` (weights.Pretrained) starts a new run from those weights; `from_init` says that a resumed
        run started from some (its checkpoints then carry the weights' normalisation)."""
        self.model_name, self.data, self.data_dir, self.recipe = model_name, data, data_dir, recipe
        self.model_options, self.download = model_options, download
        self.pretrained, self.init_notes, self.from_init = pretrained, list(init_notes or []), from_init
        self.mix: BatchMix | None = None
        self.channels_last = False
        self.low_res_steps = 0  # progressive resizing: the first steps at recipe.low_res_size (set up with the data)

    def setup(self, dist: distributed.Dist, device: torch.device) -> None:
        self.device = device
        self.train_loader, self.eval_loaders, self.final_loaders, self.info, self.mean = make_data(
            self.data, self.data_dir, self.recipe, dist, device, self.download)
        r = self.recipe
        check_sizes(r, self.info)
        self.mix = BatchMix(self.info.num_classes, r.mixup_alpha, r.cutmix_alpha, r.mix_prob)
        self.low_res_steps = round(r.low_res_fraction * r.total_steps(len(self.train_loader))) if r.low_res_size else 0

    def build_model(self) -> tuple[nn.Module, list[str]]:
        net = make_model(self.model_name, self.info, self.mean, self.model_options)
        notes = self.init_notes
        if self.pretrained is not None:
            notes = notes + finetune.load_init(net, self.pretrained, self.mean)
        return net, notes

    def model_ready(self, net: nn.Module, resumed: tuple | None) -> None:
        """The weights are in place: feed the net the normalisation it carries (fine-tuning from weights with
        their own mean and std; on resume, the one its checkpoint stores), and freeze early stages."""
        if resumed is not None and self.from_init:
            finetune.restore_normalisation(net, *resumed)
        self.train_loader, self.eval_loaders = finetune.renormalise(net, self.mean, self.train_loader,
                                                                    self.eval_loaders)
        _, self.final_loaders = finetune.renormalise(net, self.mean, self.train_loader, self.final_loaders)
        finetune.freeze(net, self.recipe.freeze)
        mean, std = net.input_mean, getattr(net, "input_std", None)
        self.offset = mean / (1 if std is None else std)
        self.channels_last = precision.channels_last(self.device, self.recipe.channels_last)

    def param_groups(self, net: nn.Module) -> list:
        return finetune.param_groups(net, self.recipe)

    def summary(self) -> str:
        return f"{self.info.num_classes} classes"

    def describe(self) -> list[str]:
        return [f"input: {describe_input(self.info, self.recipe.crop_pad)}"]

    def plot(self, rows: list[dict], path: Path, title: str) -> None:
        plot_curves({self.model_name: rows}, path, title=title)

    def train_step(self, model: nn.Module, batch, step: int, autocast: Callable) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        if self.recipe.random_erasing > 0:
            x = random_erase(x, self.recipe.random_erasing)
        target = y
        if self.mix.enabled:
            x, target = self.mix(x, y)
        if step < self.low_res_steps:
            x = low_resolution(x, self.recipe.low_res_size)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            logits = model(x)
            loss = F.cross_entropy(logits, target, label_smoothing=self.recipe.label_smoothing)
        with torch.no_grad():  # the error against each image's own label (the larger share of a mixed one)
            wrong = (logits.argmax(1) != y).sum()
            stats = torch.stack([loss.detach().double() * len(y), wrong.double(),
                                 torch.full((), len(y), dtype=torch.float64, device=y.device)])
        return loss, stats

    def evaluate(self, model: nn.Module, final: bool, autocast: Callable) -> dict:
        """The held-out errors; the final evaluation also keeps each split's confusion matrix for `write_final`."""
        row = {}
        self.final_confusion = {}
        for key, loader in (self.final_loaders if final else self.eval_loaders).items():
            confusion: list | None = [] if final else None
            result = evaluate(model, loader, self.device, autocast, self.recipe.tta, self.offset, confusion)
            row.update({f"{key}_{k}": v for k, v in result.items()})
            if confusion:
                self.final_confusion[key] = confusion[0]
        return row

    def write_final(self, run_dir: Path) -> None:
        """After the final evaluation: per_class.json (each held-out split's per-class error, precision, recall and
        confusion matrix) and confusion.png (the test split's, else val's) in the run directory."""
        if not getattr(self, "final_confusion", None):
            return
        names = [str(c) for c in self.info.classes]
        record = {key: {"per_class": per_class(matrix, names), "confusion": matrix, "classes": names,
                        "tta": self.recipe.tta} for key, matrix in self.final_confusion.items()}
        atomic_write_text(Path(run_dir) / "per_class.json", strictjson.dumps(record, indent=2))
        key = "test" if "test" in record else next(iter(record))
        plot_confusion(record[key]["confusion"], names, Path(run_dir) / "confusion.png",
                       f"{self.model_name} on {self.data} {key} (final evaluation)")

    def selection_error(self, row: dict) -> float:
        return row.get("val_top1_error", row.get("test_top1_error"))

    def window_row(self, loss_sum: float, wrong: float, count: float) -> dict:
        return {"train_loss": loss_sum / max(count, 1), "train_error": wrong / max(count, 1)}

    def row_summary(self, row: dict) -> list[str]:
        return error_parts(row, show_top5=self.info.num_classes > 5)
