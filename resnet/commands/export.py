"""Export a checkpoint to ONNX (dynamic batch, BN folded into the convs) and check it against ONNX Runtime;
`--int8` writes a post-training int8 model instead, checked for top-1 accuracy against fp32 on the held-out split."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="a .safetensors checkpoint or a run directory")
    p.add_argument("--out", required=True, metavar="FILE.onnx", help="the ONNX file to write")
    p.add_argument("--opset", type=int, help="ONNX opset: 7 to 20, default 17 (with --dynamo: 18 to 23, default 18)")
    p.add_argument("--no-fold-bn", action="store_true", help="keep BatchNormalization nodes")
    p.add_argument("--image-size", type=int, help="input side (default: the checkpoint's image size, 224 or 32)")
    p.add_argument("--dynamo", action="store_true", help="use the torch.export-based exporter (slower)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--int8", action="store_true",
                   help="write a post-training int8 model (ONNX Runtime's quantize_static: QDQ, per-channel weights), "
                        "checked: refused above --max-int8-loss relative top-1 loss against fp32 on the held-out split")
    p.add_argument("--calibration", type=int, default=512, metavar="N",
                   help="--int8: calibrate on N images (default: 512) of the training split")
    p.add_argument("--calibration-data", metavar="NAME|DIR",
                   help="--int8: calibrate on this dataset's training split or folder of images (default: the "
                        "checkpoint's own dataset)")
    p.add_argument("--data-dir", metavar="PATH", help="--int8: where the checkpoint's dataset lives (default: the "
                                                      "run's, else the usual places)")
    p.add_argument("--max-int8-loss", type=float, default=0.01, metavar="FRACTION",
                   help="--int8: the largest relative top-1 accuracy loss accepted (default: 0.01, i.e. 1%%)")
    p.add_argument("--eval-limit", type=int, metavar="N",
                   help="--int8: check accuracy on a class-balanced sample of N held-out images (default: all)")
    p.add_argument("--image", metavar="FILE", help="detector checkpoints: the image the export is checked on "
                                                  "(default: fashion-scenes' first val image)")


def run(args: argparse.Namespace) -> int:
    from resnet.detection import is_detector_checkpoint

    if is_detector_checkpoint(args.checkpoint):  # torchvision's detection export: resnet/detection/export.py
        from resnet.detection.cli import export as export_detector

        if args.int8:
            raise ValueError("--int8: detectors are exported in fp32 only (int8 is checked on classifiers' top-1 "
                             "error); drop --int8")
        return export_detector(args)
    from resnet import strictjson
    from resnet.checkpoint import load_model
    from resnet.export import TOLERANCE, check_opset, export_onnx

    opset = check_opset(args.opset, args.dynamo)
    model = load_model(args.checkpoint)
    meta = dict(model.meta)
    size = args.image_size or meta.get("image_size") or (32 if model.spec.family == "cifar" else 224)
    if args.int8:
        return _export_int8(args, model, meta, int(size), opset)
    report = export_onnx(model, args.out, image_size=int(size), opset=opset, fold_bn=not args.no_fold_bn,
                         dynamo=args.dynamo, meta=meta)
    if args.json:
        print(strictjson.dumps(report, indent=2))
    else:
        print(f"wrote {report['out']}: input {report['input_shape']}, opset {report['opset']}, "
              f"{report['batchnorm_folded']} BN folded into convs")
        print(f"max |onnxruntime - pytorch| = {report['max_abs_diff']:.3g} (batches 1 and 3, random inputs; "
              f"limit {TOLERANCE:g}); BN folding alone: {report['fold_max_abs_diff']:.3g}")
        print("inputs: pixels on 0..1, shorter side resized to resize_size, centre crop to input_size, minus input_mean"
              + (", divided by input_std" if "input_std" in report["metadata"] else "")
              + f"; the ONNX file's metadata_props hold {', '.join(report['metadata'])}")
    return 0


def _export_int8(args: argparse.Namespace, model, meta: dict, size: int, opset: int) -> int:
    """`--int8`: quantise, check against fp32 on the held-out split, write (resnet/inference/quantize.py)."""
    from resnet import strictjson
    from resnet.evaluate.runner import run_config
    from resnet.inference.quantize import export_int8

    if args.calibration < 1 or (args.eval_limit is not None and args.eval_limit < 1):
        raise ValueError("--calibration and --eval-limit must be positive")
    if args.max_int8_loss < 0:
        raise ValueError("--max-int8-loss must be 0 or more")
    if args.no_fold_bn or args.dynamo:
        raise ValueError("--int8 quantises the BN-folded TorchScript export; drop --no-fold-bn and --dynamo")
    data_dir = args.data_dir or (run_config(args.checkpoint) or {}).get("data_dir")
    report = export_int8(model, args.out, image_size=size, opset=opset, meta=meta, calibration=args.calibration,
                         calibration_data=args.calibration_data, data_dir=data_dir, max_loss=args.max_int8_loss,
                         eval_limit=args.eval_limit, progress=not args.json)
    q = report["int8"]
    if args.json:
        print(strictjson.dumps(report, indent=2))
    else:
        held = q["held_out"]
        print(f"wrote {report['out']}: int8 (QDQ, per-channel int8 weights, uint8 activations), calibrated on "
              f"{q['calibration']['images']} images of {q['calibration']['source']}; {report['bytes'] / 1e6:.2f} MB")
        print(f"top-1 error on {held['images']} {held['data']} {held['split']} images: int8 "
              f"{100 * q['int8_top1_error']:.2f}%, fp32 {100 * q['fp32_top1_error']:.2f}% "
              f"({100 * q['relative_loss']:+.2f}% relative accuracy loss; limit {100 * q['max_relative_loss']:g}%)")
    return 0
