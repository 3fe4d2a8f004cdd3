"""Grad-CAM overlays: where a trained classifier looks for the predicted class (or --class) on each image, at the
last stage by default (Captum's LayerGradCam). Writes DIR/NAME.gradcam.png per image and prints the class and
the heat map's peak."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of them")
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="a .safetensors checkpoint, a run directory or a `resnet weights` name (not an ONNX file: "
                        "Grad-CAM needs gradients)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the overlays (made if missing)")
    p.add_argument("--class", dest="target", type=int, metavar="INDEX",
                   help="explain this class index (default: each image's predicted class)")
    p.add_argument("--layer", metavar="NAME",
                   help="a stage by the paper's name (conv4_x, conv5_x) or a module path (layer3.1.conv2); "
                        "default: the last stage")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ... (default: cpu)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: `resnet explain --help` stays fast
    from resnet import strictjson
    from resnet.device import resolve_device
    from resnet.inference import is_onnx, load_classifier
    try:
        from resnet.inference.explain import explain
    except ModuleNotFoundError as missing:  # Captum is the `explain` extra
        raise ValueError(f"resnet explain needs the package {missing.name}: pip install -e '.[explain]'") from None

    if is_onnx(args.checkpoint):
        raise ValueError(f"--checkpoint {args.checkpoint}: Grad-CAM needs the network's gradients; give the "
                         f"checkpoint the ONNX file was exported from")
    resolve_device(args.device)
    classifier = load_classifier(args.checkpoint, args.device, "torch-fp32")
    results = explain(classifier, args.images, args.out, args.target, args.layer)
    if args.json:
        print(strictjson.dumps(results, indent=2))
        return 0
    for r in results:
        print(f"{r['image']}: Grad-CAM at {r['layer']} for {r['class']} ({r['probability']:.1%}; predicted "
              f"{r['predicted']['class']}), peak at row {r['peak'][0]}, column {r['peak'][1]} of "
              f"{r['size'][0]}x{r['size'][1]} -> {r['out']}")
    return 0
