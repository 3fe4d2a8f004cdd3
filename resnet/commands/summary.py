"""Print a network's Table 1 view: each stage's output size, blocks, parameters and multiply-adds."""

from __future__ import annotations

import argparse

from resnet.commands.options import add_model_options, model_options
from resnet.models import list_models
from resnet.summary import summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help=f"one of: {', '.join(list_models())}")
    p.add_argument("--input-size", type=int, help="square input side (default: 224 ImageNet nets, 32 CIFAR nets)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_model_options(p)


def run(args: argparse.Namespace) -> int:
    print(summary(args.model, args.input_size, args.json, **model_options(args)))
    return 0
