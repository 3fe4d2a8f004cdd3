"""Convert a ResNet state dict saved by torchvision or timm (.pth/.pt or .safetensors) into a checkpoint.

The network is built with the bottleneck stride in the 3x3 conv (both libraries' placement) and
projection shortcuts, and must load strictly. Their weights were trained on inputs normalised by
ImageNet's mean AND std: the checkpoint stores the mean as input_mean and the std as input_std in
its metadata, and eval/predict/analyze divide by it, so logits match the source model's.
"""

from __future__ import annotations

import argparse
import json

from resnet.convert import SOURCES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", metavar="SRC", help="the state dict file (.pth, .pt, .bin or .safetensors)")
    p.add_argument("--from", dest="source", required=True, choices=SOURCES, help="the library that saved SRC")
    p.add_argument("--model", required=True, help="network name, e.g. resnet50")
    p.add_argument("--out", required=True, metavar="DST", help="the checkpoint to write (.safetensors)")
    p.add_argument("--classes", metavar="FILE", help="class names, one a line (default: 0..K-1)")
    p.add_argument("--image-size", type=int, default=224, help="crop size recorded in the checkpoint (default: 224)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    from resnet.convert import convert

    report = convert(args.source, args.src, args.model, args.out, args.classes, args.image_size)
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if k not in ("classes", "class_names")}, indent=2))
    else:
        print(f"wrote {report['out']}: {args.model} from {args.source} ({report['tensors']} tensors, "
              f"{report['num_classes']} classes, bottleneck stride 3x3)")
        if report.get("input_std"):
            print("inputs are normalised as the source expects: (x - mean) / std with ImageNet's mean "
                  "(0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225), both stored in the checkpoint")
    return 0
