"""Fine-tuning: a run that starts from pretrained weights (`--init`), with early stages frozen and per-group lr.

The weights bring their input normalisation: the run trains on (x - mean) / std with the weights'
mean and std (adapted to the data's channels), and its checkpoints store them, so evaluation,
prediction and export normalise as the weights expect. The init is recorded in config.json and
not read again on `--resume`: the run's own checkpoint holds everything from then on.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from resnet.models import get_spec
from resnet.train.recipes import Recipe
from resnet.weights import Pretrained, load_into, load_pretrained


def read_init(model: str, init: str | Path, options: dict) -> tuple[Pretrained, dict, list[str]]:
    """The init weights for `model`, the model options they need (stride placement, shortcut, width), and notes."""
    pretrained = load_pretrained(model, init)
    merged, notes = dict(options), []
    for key, value in pretrained.options.items():
        if key == "bottleneck_stride" and get_spec(model).block != "bottleneck":
            continue  # basic blocks have no bottleneck to place the stride in
        if key in options and options[key] != value:
            notes.append(f"{key.replace('_', '-')}: {value} as in the init weights (not {options[key]})")
        merged[key] = value
    return pretrained, merged, notes


def fit_mean(mean: torch.Tensor | None, data_mean: torch.Tensor) -> torch.Tensor:
    """The weights' mean in a shape the data's images take: per pixel only if the sizes agree, else per channel."""
    if mean is None:
        return data_mean
    if mean.shape == data_mean.shape or mean.shape[1:] == (1, 1):
        return mean
    return mean.mean(dim=(1, 2), keepdim=True)


def load_init(net: nn.Module, pretrained: Pretrained, data_mean: torch.Tensor) -> list[str]:
    """Load the init weights into a new run's net; returns the notes to print (classifier, channels, input)."""
    notes = [f"init: starting from the weights {pretrained.source}"] + load_into(net, pretrained)
    net.input_mean = fit_mean(net.input_mean, data_mean)
    net.meta = {**(getattr(net, "meta", None) or {}), "init": pretrained.source}
    if net.input_std is not None:
        mean = [round(v, 4) for v in net.input_mean.mean(dim=(1, 2)).tolist()]
        std = [round(v, 4) for v in net.input_std.flatten().tolist()]
        notes.append(f"input: (x - mean) / std with the init weights' mean {mean} and std {std}")
    return notes


def restore_normalisation(net: nn.Module, saved_meta: dict, saved_mean: torch.Tensor | None) -> None:
    """On resume of a fine-tuning run: the normalisation its checkpoint was trained with (the init is not reread)."""
    if saved_mean is not None:
        net.input_mean = saved_mean
    std = saved_meta.get("input_std")
    net.input_std = None if std is None else torch.tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
    if "init" in saved_meta:
        net.meta = {**(getattr(net, "meta", None) or {}), "init": saved_meta["init"]}


class Renormalised:
    """A loader of (x - data_mean) batches giving (x - mean) / std instead; epochs and length as the loader's."""

    def __init__(self, loader, data_mean: torch.Tensor, mean: torch.Tensor, std: torch.Tensor | None) -> None:
        self.loader = loader
        self.shift = (data_mean - mean).float()
        self.std = torch.ones(1, 1, 1) if std is None else std.float()

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.loader.set_epoch(epoch, start_batch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for x, y in self.loader:
            yield (x + self.shift.to(x.device)) / self.std.to(x.device), y


def renormalise(net: nn.Module, data_mean: torch.Tensor, train_loader, eval_loaders: dict):
    """The loaders, giving the net the normalisation it carries when that is not the data's mean alone."""
    mean, std = net.input_mean, getattr(net, "input_std", None)
    if std is None and mean.shape == data_mean.shape and torch.equal(mean, data_mean):
        return train_loader, eval_loaders
    return (Renormalised(train_loader, data_mean, mean, std),
            {k: Renormalised(v, data_mean, mean, std) for k, v in eval_loaders.items()})


def freeze(net: nn.Module, stages: int | None) -> None:
    """Keep the stem and the first `stages` stages fixed: no gradients, BN in eval mode (running statistics kept)."""
    if stages is None:
        return
    if stages > len(net.stages):
        raise ValueError(f"invalid --freeze {stages}; {net.name} has {len(net.stages)} stages")
    net.frozen_stages = stages
    for module in net.frozen_modules():
        module.requires_grad_(False)
    net.train(net.training)


def param_groups(net: nn.Module, recipe: Recipe) -> list:
    """SGD parameter groups: the classifier at lr x head_lr_mult, BN weights and all biases without weight
    decay unless `decay_bn_bias`, frozen parameters left out; the plain parameter list when none applies."""
    params = list(net.named_parameters())
    trainable = [(name, p) for name, p in params if p.requires_grad]
    if recipe.head_lr_mult == 1 and recipe.decay_bn_bias and len(trainable) == len(params):
        return [p for _, p in params]  # the paper's single group
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in trainable:
        key = (name.startswith("fc."), not recipe.decay_bn_bias and p.dim() <= 1)  # BN weights and biases are 1-D
        groups.setdefault(key, []).append(p)
    return [{"params": ps, "lr_mult": recipe.head_lr_mult if head else 1.0, **({"weight_decay": 0.0} if no_decay else {})}
            for (head, no_decay), ps in groups.items()]
