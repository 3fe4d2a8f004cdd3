"""List the pretrained ImageNet weights known by name: source, published top-1, test preprocessing, local cache.

Use a name with `resnet.create_model(MODEL, pretrained=TAG)` or `resnet train --model MODEL --init TAG`.
Files are downloaded on first use into $TORCH_HOME/hub/checkpoints (default ~/.cache/torch), hash checked;
without network, download the URL elsewhere and pass the file instead of the name.
"""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="only the weights for this network, e.g. resnet50")
    p.add_argument("--urls", action="store_true", help="show each file's URL")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from resnet.weights import weights_table

    rows = [r for r in weights_table() if args.model is None or r["model"] == args.model]
    rows.sort(key=lambda r: (int(r["model"].removeprefix("resnet")), r["name"]))
    if args.model is not None and not rows:
        raise ValueError(f"--model {args.model}: no pretrained weights known for it (ImageNet nets resnet18..152 only)")
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<10} {'name (--init / pretrained=)':<28} {'source':<12} {'top-1 %':>7}  "
          f"{'test: resize/crop':<24} cached")
    for r in rows:
        test = f"{r['resize']}/{r['crop']} {r['interpolation']}"
        print(f"{r['model']:<10} {r['name'].split('.', 1)[1]:<28} {r['source']:<12} {r['top1']:>7.3f}  "
              f"{test:<24} {'yes' if r['cached'] else 'no'}")
        if args.urls:
            print(f"{'':<10} {r['url']}")
    print("top-1: ImageNet-1k val as published by the source (torchvision's docs; timm's results-imagenet.csv); "
          f"cache: {rows[0]['path'].rsplit('/', 1)[0]}")
    return 0
