"""Print the top classes (names and probabilities) of image files, or of every image in a folder, under a
trained checkpoint. Each image gets the checkpoint's own test preprocessing (resize and crop to its
training size; 256/224 for ImageNet-style nets) and is read upright (EXIF orientation).

Files that cannot be read (not an image, truncated, more than --max-pixels pixels: default 64 million, JPEGs
counted at the reduced size they are decoded to, or decompression bombs) are skipped and named, as `eval`
does; the others are predicted. The exit status is 2 only when no file could be read."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from resnet.data.folder import MAX_PIXELS
from resnet.evaluate.protocols import PROTOCOLS

ENGINES = ("auto", "torch-fp32", "torch-bf16", "onnxruntime")  # resnet.inference.ENGINES (not imported: fast --help)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format PIL reads) or folders of them")
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="a .safetensors checkpoint, a run directory, a `resnet weights` name, or an .onnx file "
                        "written by `resnet export` (fp32 or --int8; runs in ONNX Runtime)")
    p.add_argument("--engine", choices=ENGINES, default="auto",
                   help="what computes the scores: auto (default: ONNX Runtime for an .onnx file; for a checkpoint "
                        "torch, in bf16 autocast + channels_last on CPUs with native bf16), torch-fp32, torch-bf16, "
                        "onnxruntime (.onnx files)")
    p.add_argument("--top", type=int, default=5, help="how many classes to show (default: 5)")
    p.add_argument("--protocol", default="center", choices=PROTOCOLS, help="test protocol (default: center)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: 32)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ... (default: cpu)")
    p.add_argument("--draw", metavar="DIR", help="detector checkpoints: write each image with its detections drawn")
    p.add_argument("--score-threshold", type=float, default=0.5,
                   help="detector checkpoints: the lowest score shown (default: 0.5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--out", metavar="FILE", help="also write the results to FILE.json or FILE.csv")
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                   help=f"skip images above this many pixels (default: {MAX_PIXELS:,})")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision (default: on CUDA and on CPUs with native bf16); --no-amp: exact fp32, "
                        "as $RESNET_CPU_FAST=0")


def run(args: argparse.Namespace) -> int:
    from resnet.detection import is_detector_checkpoint

    if is_detector_checkpoint(args.checkpoint):  # boxes, classes, scores (and masks): resnet/detection/cli.py
        from resnet.detection.cli import predict as predict_detections

        return predict_detections(args)
    from resnet import strictjson
    from resnet.device import resolve_device
    from resnet.inference import load_classifier
    from resnet.predict import format_predictions, predict, write_predictions

    for option in ("top", "batch_size", "max_pixels"):
        if getattr(args, option) < 1:
            raise ValueError(f"--{option.replace('_', '-')} must be positive")
    if args.out and Path(args.out).suffix.lower() not in (".json", ".csv"):
        raise ValueError(f"--out {args.out}: give a .json or .csv file name")
    resolve_device(args.device)
    engine = args.engine
    if args.amp is not None:
        if engine not in ("auto", "torch-bf16" if args.amp else "torch-fp32"):
            raise ValueError(f"--{'' if args.amp else 'no-'}amp contradicts --engine {engine}")
        engine = "torch-bf16" if args.amp else "torch-fp32"
    classifier = load_classifier(args.checkpoint, args.device, engine, protocol=args.protocol)
    if args.engine != "auto" or sys.stderr.isatty():  # stderr stays the skipped files' lines when piped
        print(f"resnet predict: engine {classifier.engine}", file=sys.stderr)
    skipped: list[dict] = []
    results = predict(classifier, args.images, args.top, batch_size=args.batch_size, max_pixels=args.max_pixels,
                      skipped=skipped)
    if args.json:
        results = [{**r, "engine": classifier.engine} for r in results]
    print(strictjson.dumps(results, indent=2) if args.json else format_predictions(results))
    for item in skipped:  # each line names the file and why (stderr: stdout stays the predictions)
        print(f"resnet predict: skipped {item['error']}", file=sys.stderr)
    if args.out:
        write_predictions(results, args.out)
        print(f"wrote {args.out}", file=sys.stderr if args.json else sys.stdout)  # stdout stays JSON
    return 0
