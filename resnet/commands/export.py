"""Export a checkpoint to ONNX (dynamic batch, BN folded into the convs) and check it against ONNX Runtime."""

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
    p.add_argument("--image", metavar="FILE", help="detector checkpoints: the image the export is checked on "
                                                  "(default: fashion-scenes' first val image)")


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: `resnet export --help` loads this module only, and stays fast
    from resnet.detection import is_detector_checkpoint

    if is_detector_checkpoint(args.checkpoint):  # torchvision's detection export: resnet/detection/export.py
        from resnet.detection.cli import export as export_detector

        return export_detector(args)
    from resnet import strictjson
    from resnet.weights import load_model
    from resnet.export import TOLERANCE, check_opset, export_onnx

    opset = check_opset(args.opset, args.dynamo)
    model = load_model(args.checkpoint)
    meta = dict(model.meta)
    size = args.image_size or meta.get("image_size") or (32 if model.spec.family == "cifar" else 224)
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
