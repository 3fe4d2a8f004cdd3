"""List the pretrained weights known by name: source, dataset, published top-1 and error, test preprocessing, cache.

ImageNet: torchvision's and timm's ResNet-18..152. CIFAR-10: akamaster/pytorch_resnet_cifar10's ResNet-20..1202
(option A with the zero channels split before and after the identity, 32x32). Use a name with
`resnet.create_model(MODEL, pretrained=TAG)`, `resnet train --model MODEL --init TAG`, or the full name
(`resnet20.akamaster-cifar10`) with `resnet eval/predict/export --checkpoint`. Files are downloaded on first use
into $TORCH_HOME/hub/checkpoints (default ~/.cache/torch), hash checked; without network, download the URL
elsewhere and pass the file instead of the name (or place it in that folder).
"""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="only the weights for this network, e.g. resnet50")
    p.add_argument("--urls", action="store_true", help="show each file's URL and SHA-256 prefix")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: `resnet weights --help` loads this module only, and stays fast
    from resnet.weights import weights_table

    rows = [r for r in weights_table() if args.model is None or r["model"] == args.model]
    rows.sort(key=lambda r: (r["dataset"] != "imagenet", int(r["model"].removeprefix("resnet")), r["name"]))
    if args.model is not None and not rows:
        raise ValueError(f"--model {args.model}: no pretrained weights known for it (ImageNet nets resnet18..152 "
                         f"and CIFAR-10 nets resnet20..1202 only)")
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<10} {'name (--init / pretrained=)':<28} {'source':<12} {'data':<9} {'top-1 %':>7} {'err %':>6}  "
          f"{'test: resize/crop':<24} cached")
    for r in rows:
        test = f"{r['resize']}/{r['crop']} {r['interpolation']}" if r["dataset"] == "imagenet" else f"{r['crop']}x{r['crop']}"
        print(f"{r['model']:<10} {r['name'].split('.', 1)[1]:<28} {r['source']:<12} {r['dataset']:<9} "
              f"{r['top1']:>7.3f} {r['error']:>6.2f}  {test:<24} {'yes' if r['cached'] else 'no'}")
        if args.urls:
            print(f"{'':<10} {r['url']}  sha256 {r['sha256']}...")
    print("published by the source: ImageNet-1k val top-1 (torchvision's docs; timm's results-imagenet.csv), "
          "CIFAR-10 test error (akamaster's README); all normalise 0..1 pixels with mean (0.485, 0.456, 0.406) "
          f"and std (0.229, 0.224, 0.225); cache: {rows[0]['path'].rsplit('/', 1)[0]}")
    return 0
