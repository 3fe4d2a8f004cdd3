"""Residual building blocks (section 3.3) and the shortcut options A/B/C (Table 3).

A block computes y = relu(F(x) + shortcut(x)). The shortcut is the identity where the
dimensions agree, and where they change it is one of:
  A  zero-padding identity: subsample by striding, pad the new channels with zeros (no parameters);
     the paper does not say where the zero channels go: `zero_pad="after"` appends them after the
     identity's channels (fb.resnet.torch, our default), `"both"` splits them evenly before and after
     (akamaster/pytorch_resnet_cifar10, whose CIFAR-10 weights need it)
  B  projection W_s x (1x1 conv + BN), used only where dimensions change
  C  projection on every block
A plain block ("none") is the same F(x) with no shortcut at all: relu(F(x)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SHORTCUTS = ("A", "B", "C")
BOTTLENECK_STRIDES = ("1x1", "3x3")
ZERO_PADS = ("after", "both")  # where option A's zero channels go: after the identity, or split before/after


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (BN follows)."""
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution with no bias (BN follows)."""
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class ZeroPadShortcut(nn.Module):
    """Option A: identity with stride-2 subsampling and zero channels added; parameter free.

    `zero_pad="after"` puts all new channels after the identity's; `"both"` puts half before
    (rounded down) and the rest after. The two are the same function up to a permutation of
    channels, but weights trained with one layout give other outputs under the other.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, zero_pad: str = "after") -> None:
        super().__init__()
        if zero_pad not in ZERO_PADS:
            raise ValueError(f"invalid zero_pad={zero_pad!r}; allowed: {', '.join(map(repr, ZERO_PADS))}")
        self.stride = stride
        self.extra_channels = out_planes - in_planes
        self.zero_pad = zero_pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:  # x[:, :, ::s, ::s], as a 1x1 pooling: the same values, and on a CPU its backward is
            x = F.max_pool2d(x, 1, self.stride)  # ~2x faster than a strided slice's (in channels_last)
        if self.extra_channels:
            before = self.extra_channels // 2 if self.zero_pad == "both" else 0
            x = F.pad(x, (0, 0, 0, 0, before, self.extra_channels - before))
        return x

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra_channels={self.extra_channels}, zero_pad={self.zero_pad!r}"


def projection(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """Options B and C: W_s x as a 1x1 conv + BN (torchvision's `downsample.0/.1`)."""
    return nn.Sequential(conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))


def make_shortcut(shortcut: str | None, in_planes: int, out_planes: int, stride: int,
                  zero_pad: str = "after") -> nn.Module | None:
    """The shortcut module for one block, or None for the identity (or for a plain block).

    `zero_pad` places option A's zero channels (see ZeroPadShortcut); B and C ignore it.
    """
    if shortcut is None:
        return None
    changes = stride != 1 or in_planes != out_planes
    if shortcut == "C" or (shortcut == "B" and changes):
        return projection(in_planes, out_planes, stride)
    if shortcut == "A" and changes:
        return ZeroPadShortcut(in_planes, out_planes, stride, zero_pad)
    return None


class _Block(nn.Module):
    """Shared forward: residual branch F(x), plus the shortcut unless the block is plain."""

    expansion = 1
    residual: bool
    downsample: nn.Module | None

    def branch(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch(x)
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return F.relu(out)

    def last_bn(self) -> nn.BatchNorm2d:
        """The BN that closes the residual branch (zero-initialised on request)."""
        raise NotImplementedError


class BasicBlock(_Block):
    """Two 3x3 convs (Fig. 5 left), used by ResNet-18/34 and the CIFAR nets."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str | None = "B",
                 zero_pad: str = "after") -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.residual = shortcut is not None
        self.downsample = make_shortcut(shortcut, in_planes, planes, stride, zero_pad)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2


class Bottleneck(_Block):
    """1x1 reduce, 3x3, 1x1 restore with x4 expansion (Fig. 5 right), for ResNet-50 and deeper.

    `stride_at="1x1"` is the paper's placement (stride 2 in the first 1x1 conv);
    `"3x3"` is torchvision's (often called v1.5).
    """

    expansion = 4

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        shortcut: str | None = "B",
        stride_at: str = "1x1",
        zero_pad: str = "after",
    ) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        stride_1x1, stride_3x3 = (stride, 1) if stride_at == "1x1" else (1, stride)
        self.conv1 = conv1x1(in_planes, planes, stride_1x1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride_3x3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out_planes)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.residual = shortcut is not None
        self.downsample = make_shortcut(shortcut, in_planes, out_planes, stride, zero_pad)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3
