"""The degradation experiment in miniature (Fig. 1 / Fig. 6), what `make demo` runs: plain and residual
nets of 20 and 56 layers trained on Fashion-MNIST with the same small budget, on the CPU.

The same as `resnet reproduce degradation --data fashion-mnist --out runs/demo --device cpu --jobs 2`.
Writes runs/demo/results.json, report.md and figure6.png (plain left, residual right), and prints
the table and a one-line verdict.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--data-dir", help="Fashion-MNIST folder (default: $RESNET_DATA, ~/.cache/resnet or Debian's)")
    p.add_argument("--download", action="store_true", help="download Fashion-MNIST if it is not found")
    p.add_argument("--seeds", type=int, default=1, help="runs per net (default: 1)")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"],
                   help="where to train (default: cpu, the budget the README's numbers were measured with)")
    p.add_argument("--jobs", type=int, help="nets trained at once, in worker processes (default: 2 where there are "
                   "2 or more cores: two one-thread runs of these narrow nets beat one two-thread run)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar for each run (default: when stderr is a terminal)")


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: `resnet demo --help` loads this module only, and stays fast
    from resnet.commands.reproduce import run as reproduce_run
    from resnet.reproduce.suite import usable_cpus

    args.experiment, args.data, args.depths, args.budget = "degradation", "fashion-mnist", None, 1.0
    args.jobs = args.jobs or min(2, usable_cpus())
    return reproduce_run(args)
