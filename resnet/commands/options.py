"""Options shared by the commands that build a network (kept free of torch imports, so `--help` is quick)."""

from __future__ import annotations

import argparse
import math


def positive_int(text: str) -> int:
    """An integer of at least 1 (argparse type: a bad value is refused before anything is written)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def positive_float(text: str) -> float:
    """A finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be a finite number above 0")
    return value


def add_model_options(p: argparse.ArgumentParser) -> None:
    """Options that `create_model` takes, shared by the commands that build a network."""
    p.add_argument("--shortcut", choices=["A", "B", "C"], help="shortcut option (Table 3); default: A CIFAR, B ImageNet")
    p.add_argument("--bottleneck-stride", choices=["1x1", "3x3"], default="1x1",
                   help="where bottleneck blocks stride: 1x1 (paper) or 3x3 (torchvision)")
    p.add_argument("--num-classes", type=positive_int, help="classifier outputs (default: 1000 ImageNet nets, 10 CIFAR nets)")
    p.add_argument("--in-channels", type=positive_int, help="input channels (default: 3, or the dataset's when training)")
    p.add_argument("--base-width", type=positive_int, help="filters of the first stage, doubled per stage (default: 16 CIFAR, 64 ImageNet)")
    p.add_argument("--zero-init-residual", action="store_true",
                   help="start each residual block's last BN scale at 0, so every block begins as its shortcut "
                        "(Goyal et al. 2017; not in the paper)")


def model_options(args: argparse.Namespace) -> dict:
    options = {"bottleneck_stride": args.bottleneck_stride}
    for name in ("in_channels", "shortcut", "num_classes", "base_width"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    if getattr(args, "zero_init_residual", False):
        options["zero_init_residual"] = True
    return options
