"""Convert a ResNet state dict saved by torchvision, timm (.pth/.pt or .safetensors) or akamaster's CIFAR-10
reproduction (.th) into a checkpoint.

torchvision/timm: the network is built with the bottleneck stride in the 3x3 conv (both libraries'
placement) and projection shortcuts. akamaster: a CIFAR net with option A shortcuts whose zero
channels are split before and after the identity (`zero_pad="both"`), 32x32, CIFAR-10's class
names. Either must load strictly, and weights holding NaN or infinity are refused. All three were
trained on inputs normalised by ImageNet's mean AND std: the checkpoint stores the mean as input_mean
and the std as input_std in its metadata, and eval/predict/analyze divide by it, so logits match the
source model's.
"""

from __future__ import annotations

import argparse
import json

from resnet.convert import SOURCES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", metavar="SRC", help="the state dict file (.pth, .pt, .bin or .safetensors)")
    p.add_argument("--from", dest="source", required=True, choices=SOURCES, help="the library that saved SRC")
    p.add_argument("--model", required=True, help="network name, e.g. resnet50 (or resnet56 for akamaster)")
    p.add_argument("--out", required=True, metavar="DST", help="the checkpoint to write (.safetensors)")
    p.add_argument("--classes", metavar="FILE", help="class names, one a line (default: 0..K-1)")
    p.add_argument("--image-size", type=int,
                   help="crop size recorded in the checkpoint (default: 224; 32 for akamaster's CIFAR nets)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: `resnet convert --help` loads this module only, and stays fast
    from resnet.convert import convert

    if args.image_size is not None and args.image_size < 1:
        raise ValueError(f"--image-size {args.image_size}: must be a positive number of pixels")
    report = convert(args.source, args.src, args.model, args.out, args.classes, args.image_size)
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if k not in ("classes", "class_names")}, indent=2))
    else:
        print(f"wrote {report['out']}: {args.model} from {args.source} ({report['tensors']} tensors, "
              f"{report['num_classes']} classes, {report['described']})")
        if report.get("input_std"):
            print("inputs are normalised as the source expects: (x - mean) / std with ImageNet's mean "
                  "(0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225), both stored in the checkpoint")
    return 0
