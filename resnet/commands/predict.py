"""Print the top classes (names and probabilities) of image files under a trained checkpoint."""

from __future__ import annotations

import argparse

from resnet.evaluate.protocols import PROTOCOLS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format PIL reads)")
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="a .safetensors checkpoint or a run directory")
    p.add_argument("--top", type=int, default=5, help="how many classes to show (default: 5)")
    p.add_argument("--protocol", default="center", choices=PROTOCOLS, help="test protocol (default: center)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ... (default: cpu)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args: argparse.Namespace) -> int:
    from resnet import strictjson
    from resnet.checkpoint import load_model
    from resnet.device import resolve_device
    from resnet.predict import format_predictions, predict

    if args.top < 1:
        raise ValueError("--top must be positive")
    resolve_device(args.device)
    model = load_model(args.checkpoint, args.device)
    results = predict(model, args.images, args.top, args.protocol, args.device)
    print(strictjson.dumps(results, indent=2) if args.json else format_predictions(results))
    return 0
