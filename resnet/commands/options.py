"""Options shared by the commands that build a network (kept free of torch imports, so `--help` is quick)."""

from __future__ import annotations

import argparse


def add_model_options(p: argparse.ArgumentParser) -> None:
    """Options that `create_model` takes, shared by the commands that build a network."""
    p.add_argument("--shortcut", choices=["A", "B", "C"], help="shortcut option (Table 3); default: A CIFAR, B ImageNet")
    p.add_argument("--bottleneck-stride", choices=["1x1", "3x3"], default="1x1",
                   help="where bottleneck blocks stride: 1x1 (paper) or 3x3 (torchvision)")
    p.add_argument("--num-classes", type=int, help="classifier outputs (default: 1000 ImageNet nets, 10 CIFAR nets)")
    p.add_argument("--in-channels", type=int, help="input channels (default: 3, or the dataset's when training)")
    p.add_argument("--base-width", type=int, help="filters of the first stage, doubled per stage (default: 16 CIFAR, 64 ImageNet)")


def model_options(args: argparse.Namespace) -> dict:
    options = {"bottleneck_stride": args.bottleneck_stride}
    if args.in_channels:
        options["in_channels"] = args.in_channels
    if args.shortcut:
        options["shortcut"] = args.shortcut
    if args.num_classes:
        options["num_classes"] = args.num_classes
    if args.base_width:
        options["base_width"] = args.base_width
    return options
