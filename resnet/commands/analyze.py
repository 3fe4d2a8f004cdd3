"""Analyses of trained networks. `responses`: the paper's Fig. 7, the std of each 3x3 layer's response
(after BN, before addition/ReLU) over test images, one line per network, as JSON and a PNG plot."""

from __future__ import annotations

import argparse

from resnet.commands.options import positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS")
    r = sub.add_parser("responses", help="std of each 3x3 layer's response (Fig. 7)", description=__doc__)
    r.add_argument("--checkpoint", action="append", required=True, metavar="PATH",
                   help="a checkpoint or run directory; repeat for several networks (e.g. plain-20 and ResNet-20)")
    r.add_argument("--data", required=True, metavar="NAME", help="dataset the images come from")
    r.add_argument("--data-dir", metavar="PATH", help="where the dataset lives")
    r.add_argument("--split", default="test", choices=["train", "val", "test"], help="split (default: test)")
    r.add_argument("--images", type=positive_int, default=1000, metavar="N", help="a seeded, class-balanced sample of N images of the split (default: 1000)")
    r.add_argument("--batch-size", type=positive_int, default=100, help="images per batch (default: 100)")
    r.add_argument("--device", default="cpu", help="cpu, cuda, ... (default: cpu)")
    r.add_argument("--out", default="responses", metavar="DIR", help="writes DIR/responses.json and .png")
    r.add_argument("--download", action="store_true", help="download the dataset if it is missing")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: `resnet analyze --help` loads this module only, and stays fast
    from resnet.device import resolve_device
    from resnet.evaluate.analysis import analyze_responses

    resolve_device(args.device)
    result = analyze_responses(args.checkpoint, args.data, data_dir=args.data_dir, split=args.split,
                               images=args.images, batch_size=args.batch_size, device=args.device, out=args.out,
                               progress=not args.no_progress, download=args.download)
    for net in result["networks"]:
        stds = [layer["std"] for layer in net["layers"]]
        print(f"{net['label']}: {len(stds)} 3x3 layers, response std mean {sum(stds) / len(stds):.4f}, "
              f"min {min(stds):.4f}, max {max(stds):.4f} ({net['images']} images)")
    print(f"wrote {args.out}/responses.json and {args.out}/responses.png")
    return 0
