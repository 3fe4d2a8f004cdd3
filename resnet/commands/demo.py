"""The degradation experiment in miniature: plain and residual nets at two depths on Fashion-MNIST (CPU)."""

from __future__ import annotations

import argparse

from resnet.demo import DemoConfig, run_demo


def add_arguments(p: argparse.ArgumentParser) -> None:
    defaults = DemoConfig()
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--data-dir", help="Fashion-MNIST folder (default: the usual places)")
    p.add_argument("--download", action="store_true", help="download Fashion-MNIST if it is not found")
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--subset", type=int, default=defaults.subset, help="training images")
    p.add_argument("--depths", type=int, nargs="+", default=list(defaults.depths))
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)


def run(args: argparse.Namespace) -> int:
    config = DemoConfig(epochs=args.epochs, subset=args.subset, depths=tuple(args.depths))
    run_demo(args.out, config, data_dir=args.data_dir, download=args.download, progress=args.progress)
    return 0
