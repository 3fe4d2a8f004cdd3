"""What `resnet predict`, `resnet eval` and `resnet export` do with a detector checkpoint (the commands
dispatch here when `is_detector_checkpoint` says so), and `resnet data fashion-scenes`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from resnet.data.folder import MAX_PIXELS


def predict(args: argparse.Namespace) -> int:
    """Detections of each image: text or --json on stdout, --out FILE.json/.csv, --draw DIR."""
    from resnet import strictjson
    from resnet.detection.models import load_detector
    from resnet.detection.predict import draw_detections, format_detections, predict_detections, public, write_detections

    threshold = getattr(args, "score_threshold", 0.5)
    if not 0 <= threshold <= 1:
        raise ValueError(f"--score-threshold {threshold}: give a value in 0..1")
    draw = getattr(args, "draw", None)
    if draw is not None and Path(draw).exists() and not Path(draw).is_dir():
        raise ValueError(f"--draw {draw}: is a file; give a folder (each image is drawn into it as NAME.png)")
    model = load_detector(args.checkpoint[0] if isinstance(args.checkpoint, list) else args.checkpoint, args.device)
    results = predict_detections(model, args.images, device=args.device, score_threshold=threshold,
                                 max_pixels=args.max_pixels, keep_masks=draw is not None)
    print(strictjson.dumps(public(results), indent=2) if args.json else format_detections(results))
    notes = sys.stderr if args.json else sys.stdout  # stdout stays JSON
    if args.out:
        write_detections(results, args.out)
        print(f"wrote {args.out}", file=notes)
    if draw is not None:
        written = draw_detections(results, draw)
        print(f"drew {len(written)} image(s) into {draw}", file=notes)
    return 0


def evaluate(args: argparse.Namespace) -> int:
    """COCO box (and mask) AP of one detector checkpoint on a COCO-format split; --json OUT as classification."""
    from resnet import strictjson
    from resnet.detection.coco import detection_datasets
    from resnet.detection.evaluate import evaluate_detector
    from resnet.detection.models import load_detector

    if len(args.checkpoint) != 1:
        raise ValueError("--checkpoint: detectors are evaluated one at a time (no ensembles)")
    split = "val" if args.split == "test" else args.split  # COCO-format data has train and val
    model = load_detector(args.checkpoint[0], args.device)
    set_input_size(model, getattr(args, "min_size", None), getattr(args, "max_size", None))
    datasets, _ = detection_datasets(args.data, args.data_dir, masks=model.roi_heads.has_mask(), augment=False,
                                     splits=(split,), max_pixels=getattr(args, "max_pixels", None) or MAX_PIXELS)
    print(f"detector input: shorter side {model.transform.min_size[0]} px, longer side at most "
          f"{model.transform.max_size} px")
    metrics = evaluate_detector(model, datasets[split], device=args.device, batch_size=args.batch_size,
                                progress=not args.no_progress, limit=args.limit)
    result = {"checkpoint": args.checkpoint[0], "data": args.data, "split": split, **metrics}
    print("\n".join(f"{k:>10}: {v:.4f}" if isinstance(v, float) else f"{k:>10}: {v}" for k, v in result.items()))
    if args.json:
        strictjson.write(args.json, result)
        print(f"wrote {args.json}")
    return 0


def set_input_size(model, min_size: int | None, max_size: int | None) -> None:
    """Override the scale the checkpoint's transform resizes images to (GeneralizedRCNNTransform)."""
    for name, value in (("--min-size", min_size), ("--max-size", max_size)):
        if value is not None and value < 1:
            raise ValueError(f"{name} {value}: give a positive number of pixels")
    if min_size is not None:
        model.transform.min_size = (min_size,)
    if max_size is not None:
        model.transform.max_size = max_size
    if model.transform.max_size < model.transform.min_size[0]:
        raise ValueError(f"--max-size {model.transform.max_size} is smaller than --min-size "
                         f"{model.transform.min_size[0]}")


def export(args: argparse.Namespace) -> int:
    """ONNX export of a detector, checked against ONNX Runtime on --image (default: a fashion-scenes image)."""
    from resnet import strictjson
    from resnet.detection.export import OPSET, check_image, export_detector
    from resnet.detection.models import load_detector

    model = load_detector(args.checkpoint)
    image, name = check_image(model, getattr(args, "image", None))
    report = export_detector(model, args.out, image, opset=args.opset or OPSET)
    report["check_image"] = name
    if args.json:
        print(strictjson.dumps(report, indent=2))
    else:
        print(f"wrote {report['out']}: input image [C,H,W] on 0..1, outputs {', '.join(report['outputs'])}, "
              f"opset {report['opset']}")
        print(f"ONNX Runtime vs PyTorch on {name}: {report['detections']} detections, max |diff| boxes "
              f"{report['max_abs_diff_boxes']:.3g} px, scores {report['max_abs_diff_scores']:.3g}")
    return 0


def fashion_scenes(args: argparse.Namespace) -> int:
    """`resnet data fashion-scenes`: generate the scenes (kept when already there with the same parameters)."""
    from resnet.detection.scenes import make_fashion_scenes

    folder, how = make_fashion_scenes(args.out or (Path(args.data_dir) / "fashion-scenes" if args.data_dir else None),
                                      train=args.train, val=args.val, size=args.size, seed=args.seed,
                                      progress=True)
    print(f"fashion-scenes: {how} in {folder} ({args.train} train, {args.val} val canvases of {args.size}px)")
    return 0
