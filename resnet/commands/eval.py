"""Top-1/top-5 error (and loss) of checkpoints on a dataset split under the paper's test protocols.

Several --checkpoint options also give the ensemble's error (softmax scores averaged). Protocols:
center (256 resize, 224 centre crop; CIFAR-size data: the image itself), 10crop (corners and centre
and their flips; CIFAR-size data: crops of the image padded by 4), multiscale (fully-convolutional,
shorter side at each of --scales, and the flip; CIFAR-size default: the image's own size).

A run directory is scored with its final weights (checkpoints/last); --which best scores the checkpoint that
was selected on the held-out split. Splits are named as they are: an image folder's held-out images are its
val/ ("val"), and a small dataset's --split val is the held-out part of its training set, not its test set.
"""

from __future__ import annotations

import argparse

from resnet.evaluate.protocols import PAPER_SCALES, PROTOCOLS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", action="append", required=True, metavar="PATH",
                   help="a .safetensors checkpoint, a run directory or an .onnx file from `resnet export` (fp32 or "
                        "int8: run in ONNX Runtime with the file's own preprocessing); repeat for an ensemble")
    p.add_argument("--data", required=True, metavar="NAME",
                   help="dataset: cifar10, cifar100, fashion-mnist, imagenet, folder, synthetic; for a detector "
                        "fashion-scenes or coco (a COCO-format folder as --data-dir)")
    p.add_argument("--data-dir", metavar="PATH", help="where the dataset lives")
    p.add_argument("--split", default="test", choices=["train", "val", "test"],
                   help="split to evaluate (default: test; an image folder's held-out split is its val/)")
    p.add_argument("--which", default="last", choices=["last", "best"],
                   help="for a run directory: its final weights (last, the default) or checkpoints/best (selected "
                        "on the held-out split, so scoring it on that split is optimistic)")
    p.add_argument("--protocol", default="center", choices=PROTOCOLS, help="test protocol (default: center)")
    p.add_argument("--tta", choices=["none", "flip", "flip-shift"], default="none",
                   help="flip: average each image's scores with its horizontal flip's; flip-shift: also with "
                        "copies moved one pixel down-right and up-left and their flips (--protocol center; "
                        "10crop and multiscale have their own views)")
    p.add_argument("--scales", type=int, nargs="+", metavar="S",
                   help=f"shorter sides for multiscale (default: {' '.join(map(str, PAPER_SCALES))}; CIFAR-size: the image size)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (default: 64)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    p.add_argument("--workers", type=int, help="data-loading processes (default: cores - 1, at most 8)")
    p.add_argument("--limit", type=int, metavar="N", help="a seeded, class-balanced sample of N images")
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
    p.add_argument("--confusion", metavar="FILE.png",
                   help="draw the confusion matrix with the class names (the ensemble's for several checkpoints)")
    p.add_argument("--download", action="store_true", help="download the dataset if it is missing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from resnet.detection import is_detector_checkpoint

    if is_detector_checkpoint(args.checkpoint[0]):  # COCO box/mask AP (--data fashion-scenes or coco)
        from resnet.detection.cli import evaluate as evaluate_detector

        return evaluate_detector(args)
    from resnet import strictjson
    from resnet.atomic import atomic_write_text
    from resnet.device import resolve_device
    from resnet.evaluate.runner import evaluate_checkpoints, format_results
    from resnet.inference import load_network

    if args.scales and args.protocol != "multiscale":
        raise ValueError("--scales applies to --protocol multiscale only")
    if args.tta != "none":
        if args.protocol not in ("center", args.tta):
            raise ValueError(f"--tta {args.tta}: --protocol {args.protocol} has its own views (use --protocol center)")
        args.protocol = args.tta
    if args.confusion and not args.confusion.lower().endswith(".png"):
        raise ValueError(f"--confusion {args.confusion}: give a .png file name")
    if args.batch_size < 1 or (args.limit is not None and args.limit < 1):
        raise ValueError("--batch-size and --limit must be positive")
    resolve_device(args.device)
    result = evaluate_checkpoints(args.checkpoint, args.data, data_dir=args.data_dir, split=args.split,
                                  protocol=args.protocol, scales=args.scales, batch_size=args.batch_size,
                                  device=args.device, limit=args.limit, num_workers=args.workers,
                                  progress=not args.no_progress, download=args.download, which=args.which,
                                  load=load_network)
    print(format_results(result))
    if args.confusion:
        from resnet.evaluate.confusion import plot_confusion

        scored = result.get("ensemble") or result["members"][0]
        title = f"{scored.get('checkpoint') or 'ensemble'}: {result['data']} {result['split']} ({result['protocol']})"
        plot_confusion(scored["confusion"], result["classes"], args.confusion, title)
        print(f"wrote {args.confusion}")
    if args.json:
        atomic_write_text(args.json, strictjson.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0
