"""Every network of the paper by name: Table 1 (ImageNet) and section 4.2 (CIFAR)."""

from __future__ import annotations

import dataclasses
import difflib

from torch import nn

from resnet.models.blocks import BOTTLENECK_STRIDES, SHORTCUTS, ZERO_PADS
from resnet.models.networks import NetworkSpec, ResNet

IMAGENET_WIDTHS = (64, 128, 256, 512)
CIFAR_WIDTHS = (16, 32, 64)

# Table 1: blocks per stage conv2_x..conv5_x.
TABLE_1 = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),  # from the follow-up paper (He et al., 2016)
}
# Section 4.2: 6n+2 layers, n basic blocks in each of three stages.
CIFAR_N = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18, 1202: 200}
PLAIN_IMAGENET = (18, 34)
PLAIN_CIFAR = (20, 32, 44, 56, 110)


def _build_specs() -> dict[str, NetworkSpec]:
    specs = {}
    for depth, (block, blocks) in TABLE_1.items():
        specs[f"resnet{depth}"] = NetworkSpec("imagenet", block, blocks, IMAGENET_WIDTHS)
        if depth in PLAIN_IMAGENET:
            specs[f"plain{depth}"] = NetworkSpec("imagenet", block, blocks, IMAGENET_WIDTHS, residual=False)
    for depth, n in CIFAR_N.items():
        specs[f"resnet{depth}"] = NetworkSpec("cifar", "basic", (n, n, n), CIFAR_WIDTHS)
        if depth in PLAIN_CIFAR:
            specs[f"plain{depth}"] = NetworkSpec("cifar", "basic", (n, n, n), CIFAR_WIDTHS, residual=False)
    return specs


SPECS: dict[str, NetworkSpec] = _build_specs()


def list_models(family: str | None = None) -> list[str]:
    """Names accepted by `build_model`, optionally only one family ("imagenet" or "cifar")."""
    names = [n for n, s in SPECS.items() if family is None or s.family == family]
    return sorted(names, key=lambda n: (SPECS[n].family, not SPECS[n].residual, SPECS[n].depth))


def get_spec(name: str) -> NetworkSpec:
    """The spec for `name`, or a ValueError listing the closest names."""
    if name not in SPECS:
        close = difflib.get_close_matches(name, list(SPECS), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Available: {', '.join(list_models())}")
    return SPECS[name]


def default_shortcut(name: str) -> str:
    """The paper's default: option A for the CIFAR nets, B for the ImageNet nets."""
    return "A" if get_spec(name).family == "cifar" else "B"


def _check_choice(option: str, value: object, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"invalid {option}={value!r}; allowed: {', '.join(map(repr, allowed))}")


def build_model(
    name: str,
    *,
    num_classes: int | None = None,
    in_channels: int = 3,
    shortcut: str | None = None,
    bottleneck_stride: str = "1x1",
    zero_init_residual: bool = False,
    base_width: int | None = None,
    zero_pad: str = "after",
) -> nn.Module:
    """Build a network of the paper by name, e.g. `build_model("resnet56")`, freshly initialised.

    `resnet.create_model(name, pretrained=None, **options)` (resnet/weights.py) is the public entry: without
    weights it is this function; the models package stays below the weights code and never imports it.

    Defaults follow the paper: 1000 classes and shortcut B for ImageNet nets, 10 classes and
    shortcut A for CIFAR nets, stride in the bottleneck's first 1x1 conv. `base_width` changes
    the first stage's filters (16 CIFAR, 64 ImageNet), doubling per stage as in the paper.
    `zero_pad` places option A's zero channels: "after" the identity's (fb.resnet.torch, the
    default) or split evenly "both" before and after (akamaster's CIFAR-10 weights); the paper
    leaves it open. It is recorded in `model.options` (and so in checkpoints) when shortcut is A.
    """
    spec = get_spec(name)
    if base_width is not None:
        if not isinstance(base_width, int) or base_width < 1:
            raise ValueError(f"invalid base_width={base_width!r}; must be a positive integer")
        spec = dataclasses.replace(spec, widths=tuple(base_width * 2**i for i in range(len(spec.widths))))
    shortcut = default_shortcut(name) if shortcut is None else str(shortcut).upper()
    _check_choice("shortcut", shortcut, SHORTCUTS)
    _check_choice("bottleneck_stride", bottleneck_stride, BOTTLENECK_STRIDES)
    _check_choice("zero_pad", zero_pad, ZERO_PADS)
    if num_classes is None:
        num_classes = 1000 if spec.family == "imagenet" else 10
    for option, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"invalid {option}={value!r}; must be a positive integer")
    model = ResNet(spec, num_classes, in_channels, shortcut, bottleneck_stride, zero_init_residual, zero_pad)
    model.name = name
    model.options = {
        "num_classes": num_classes,
        "in_channels": in_channels,
        "shortcut": shortcut,
        "bottleneck_stride": bottleneck_stride,
        "zero_init_residual": zero_init_residual,
    }
    if base_width is not None:
        model.options["base_width"] = base_width
    if shortcut == "A":
        model.options["zero_pad"] = zero_pad
    return model
