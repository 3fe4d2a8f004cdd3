"""Augmentations of a whole batch on its device, after the loader: random erasing, mixup or cutmix, and the
lower resolution of progressive resizing.

Not in the paper; the modern recipe's regularisers (Zhong et al. 2017; Zhang et al. 2017; Yun et al. 2019).
Mixup and cutmix are torchvision's (`transforms.v2.MixUp`/`CutMix`: one lambda per batch, each image paired
with its neighbour in the shuffled batch). Random erasing is drawn per image but without a per-image Python
loop. All randomness comes from torch's global generator, which checkpoints save, so a resume is exact.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

ERASE_SCALE = (0.02, 0.33)  # fraction of the image erased (torchvision's and Zhong et al.'s defaults)
ERASE_RATIO = (0.3, 3.3)  # aspect ratio of the erased rectangle


def random_erase(x: torch.Tensor, p: float) -> torch.Tensor:
    """Each image, with probability `p`, gets one rectangle set to 0 (the mean colour: inputs are mean-subtracted)."""
    n, _, h, w = x.shape
    u = torch.rand(5, n)  # apply?, area, log aspect, top, left
    area = h * w * (ERASE_SCALE[0] + (ERASE_SCALE[1] - ERASE_SCALE[0]) * u[1])
    log_lo, log_hi = math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[2])
    eh = torch.sqrt(area * aspect).round().clamp(1, h)
    ew = torch.sqrt(area / aspect).round().clamp(1, w)
    top = (u[3] * (h - eh + 1)).floor()
    left = (u[4] * (w - ew + 1)).floor()
    rows = torch.arange(h)[None, :]
    cols = torch.arange(w)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + eh)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + ew)[:, None])
    mask = in_rows[:, :, None] & in_cols[:, None, :] & (u[0] < p)[:, None, None]
    return x.masked_fill(mask[:, None].to(x.device), 0.0)


def low_resolution(x: torch.Tensor, size: int) -> torch.Tensor:
    """The batch resized to `size` x `size` (bilinear, antialiased): progressive resizing's early epochs (fastai,
    FFCV), cheaper in proportion to the pixels; the net is fully convolutional up to its global average pool."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


class BatchMix:
    """Mixup and/or cutmix on a fraction `prob` of the batches (one of the two at random when both are on).

    Returns soft targets ([N, classes] probabilities); a batch left unmixed gets one-hot targets, so that
    the loss is the same cross-entropy (with label smoothing) either way.
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
                 prob: float = 1.0) -> None:
        self.num_classes, self.prob = num_classes, prob
        self.choices = ([v2.MixUp(alpha=mixup_alpha, num_classes=num_classes)] if mixup_alpha > 0 else []) + \
                       ([v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes)] if cutmix_alpha > 0 else [])

    @property
    def enabled(self) -> bool:
        return bool(self.choices) and self.prob > 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        draw = torch.rand(2)  # mix this batch?, which of the two
        if draw[0] >= self.prob:
            return x, F.one_hot(y, self.num_classes).to(x.dtype)
        mix = self.choices[int(draw[1] * len(self.choices))]
        return mix(x, y)
