"""Get a dataset onto this machine: for Fashion-MNIST, the files already here, else Debian's
dataset-fashion-mnist package (root on Debian/Ubuntu), else a checksummed download from torchvision's
mirrors. Exit status 2, with one line saying both ways to get it, when none works.

Examples:
  resnet data fashion-mnist                 # what `make data` runs
  resnet data fashion-mnist --no-apt        # only look, then download
  resnet data cifar10 --data-dir ~/data     # CIFAR: torchvision's download (md5 checked)
  resnet data fashion-scenes --train 2000 --val 500 --size 128   # detection scenes from Fashion-MNIST
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", choices=["fashion-mnist", "cifar10", "cifar100", "fashion-scenes"],
                   help="dataset to fetch (fashion-scenes: generated from Fashion-MNIST, COCO format)")
    p.add_argument("--data-dir", help="where to look and download (default: $RESNET_DATA or ~/.cache/resnet)")
    p.add_argument("--apt", action=argparse.BooleanOptionalAction, default=True,
                   help="try Debian's dataset-fashion-mnist package (root only; default: on)")
    p.add_argument("--download", action=argparse.BooleanOptionalAction, default=True,
                   help="try torchvision's mirrors (default: on)")
    scenes = p.add_argument_group("fashion-scenes")
    scenes.add_argument("--out", metavar="DIR", help="where to write (default: DATA_DIR/fashion-scenes)")
    scenes.add_argument("--train", type=int, default=2000, metavar="N", help="training canvases (default: 2000)")
    scenes.add_argument("--val", type=int, default=500, metavar="M", help="validation canvases (default: 500)")
    scenes.add_argument("--size", type=int, default=128, metavar="S", help="canvas side in pixels (default: 128)")
    scenes.add_argument("--seed", type=int, default=0, metavar="K", help="seed of the composition (default: 0)")


def run(args: argparse.Namespace) -> int:
    if args.dataset == "fashion-scenes":
        # imported here, not at the top: `resnet data --help` loads this module only, and stays fast
        from resnet.detection.cli import fashion_scenes

        return fashion_scenes(args)
    if args.dataset == "fashion-mnist":
        from resnet.data.fetch import ensure_fashion_mnist

        folder, how = ensure_fashion_mnist(args.data_dir, apt=args.apt, download=args.download)
        print(f"fashion-mnist: {how} in {folder}")
        return 0
    from resnet.data import dataset_info

    info = dataset_info(args.dataset, args.data_dir, download=args.download)
    print(f"{args.dataset}: in {info.root}")
    return 0
