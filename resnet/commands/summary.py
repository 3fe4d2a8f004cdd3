"""Print a network's Table 1 view: each stage's output size, blocks, parameters and multiply-adds."""

from __future__ import annotations

import argparse

from resnet.models import list_models
from resnet.summary import summary


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


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help=f"one of: {', '.join(list_models())}")
    p.add_argument("--input-size", type=int, help="square input side (default: 224 ImageNet nets, 32 CIFAR nets)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_model_options(p)


def run(args: argparse.Namespace) -> int:
    print(summary(args.model, args.input_size, args.json, **model_options(args)))
    return 0
