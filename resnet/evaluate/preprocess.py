"""A checkpoint's input normalisation: its mean subtracted (and, for imported weights, its std divided).

The paper subtracts the per-pixel mean; our checkpoints store it as `input_mean` ([C,H,W] per pixel
or [C,1,1] per channel, on the 0..1 scale). Weights converted from torchvision or timm were trained
on (x - mean) / std, so their metadata also carries `input_std`, which is divided here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class InputNorm(nn.Module):
    """(x - mean) / std for a batch of 0..1 images [N,C,H,W] of any size.

    A per-pixel mean is subtracted pixel by pixel when the views have its size; views of another
    size (multi-scale testing, bigger crops) get its per-channel average, the only mean that is
    defined everywhere on them.
    """

    def __init__(self, mean: torch.Tensor | None, std: Sequence[float] | torch.Tensor | None = None) -> None:
        super().__init__()
        mean = torch.zeros(1, 1, 1) if mean is None else torch.as_tensor(mean, dtype=torch.float32)
        if mean.dim() == 1:
            mean = mean[:, None, None]
        self.register_buffer("mean", mean)
        self.register_buffer("channel_mean", mean.mean(dim=(1, 2), keepdim=True))
        std = torch.ones(1) if std is None else torch.as_tensor(std, dtype=torch.float32)
        self.register_buffer("std", std.reshape(-1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.mean if tuple(self.mean.shape[1:]) in ((1, 1), tuple(x.shape[-2:])) else self.channel_mean
        return (x - mean) / self.std


def input_std(model: nn.Module) -> torch.Tensor | None:
    """A checkpoint's `input_std` ([C,1,1]): the model's attribute, else its metadata's list, else None."""
    std = getattr(model, "input_std", None)
    if std is None:
        std = (getattr(model, "meta", None) or {}).get("input_std")
    return None if std is None else torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1)


def input_norm(model: nn.Module, fallback_mean: torch.Tensor | None = None) -> InputNorm:
    """The normalisation a loaded checkpoint expects: its `input_mean` (else `fallback_mean`) and `input_std`."""
    mean = getattr(model, "input_mean", None)
    if mean is None:
        mean = fallback_mean
    return InputNorm(mean, input_std(model))
