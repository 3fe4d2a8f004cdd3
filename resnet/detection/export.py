"""ONNX export of a detector (torchvision's detection export, TorchScript-based exporter), checked against
ONNX Runtime on a real image.

The graph takes one image [C,H,W] on 0..1 (any H and W: the detector's own resize and normalisation are
inside it) and returns boxes [N,4] x1y1x2y2 in the image's pixels, labels [N], scores [N] (and masks
[N,1,H,W] for a Mask R-CNN), as the PyTorch model in eval mode. The check runs both on the image and
requires the same detections: same count and labels, boxes within `BOX_TOLERANCE` pixels, scores within
`SCORE_TOLERANCE`. torchvision documents this export for opset 11 and up; with this torch it works with
the TorchScript exporter (`dynamo=False`), which is what is used here.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from resnet.atomic import atomic_write
from resnet.checkpoint import check_finite
from resnet.detection.scenes import default_folder
from resnet.predict import read_image

BOX_TOLERANCE = 0.05  # pixels
SCORE_TOLERANCE = 1e-3
OPSET = 17


def _outputs(model: nn.Module) -> list[str]:
    return ["boxes", "labels", "scores"] + (["masks"] if model.roi_heads.has_mask() else [])


def check_detector_onnx(path: str | Path, model: nn.Module, image: torch.Tensor) -> dict:
    """Largest |ONNX Runtime - PyTorch| of boxes and scores on `image`, or one line saying how they differ."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = dict(zip(_outputs(model), session.run(None, {session.get_inputs()[0].name: image.numpy()})))
    with torch.no_grad():
        expected = model.eval()([image])[0]
    if got["boxes"].shape != tuple(expected["boxes"].shape) or (got["labels"] != expected["labels"].numpy()).any():
        raise ValueError(f"{path}: ONNX Runtime finds {len(got['boxes'])} detections, PyTorch {len(expected['boxes'])} "
                         f"(or other labels); nothing written")
    report = {"detections": int(len(got["boxes"]))}
    for key in ("boxes", "scores") + (("masks",) if "masks" in got else ()):
        diff = torch.from_numpy(got[key]).float() - expected[key].float()
        report[f"max_abs_diff_{key}"] = float(diff.abs().max()) if diff.numel() else 0.0
    return report


def export_detector(model: nn.Module, out: str | Path, image: torch.Tensor, *, opset: int = OPSET) -> dict:
    """Write the detector as ONNX (atomically) and check it on `image` ([C,H,W] on 0..1) against ONNX Runtime."""
    import onnx

    out = Path(out)
    model = model.to("cpu").eval()
    check_finite(model.state_dict(), f"the detector to export to {out}")
    names = _outputs(model)
    report: dict = {"out": str(out), "opset": opset, "input": ["channels", "height", "width"], "outputs": names}

    def write(tmp: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, ([image],), tmp, dynamo=False, opset_version=opset, input_names=["image"],
                              output_names=names, dynamic_axes={"image": {1: "height", 2: "width"},
                                                                **{n: {0: "detections"} for n in names}})
        graph = onnx.load(tmp)
        for key, value in (("resnet", json.dumps(model.meta)), ("class_names", json.dumps(model.meta["class_names"]))):
            entry = graph.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(graph, tmp)
        report.update(check_detector_onnx(tmp, model, image))
        if report["max_abs_diff_boxes"] > BOX_TOLERANCE or report["max_abs_diff_scores"] > SCORE_TOLERANCE:
            raise ValueError(f"{out}: ONNX Runtime's boxes differ from PyTorch's by {report['max_abs_diff_boxes']:.3g} px "
                             f"(limit {BOX_TOLERANCE}), scores by {report['max_abs_diff_scores']:.3g} (limit "
                             f"{SCORE_TOLERANCE}); nothing written")

    atomic_write(out, write)
    return report


def check_image(model: nn.Module, image: str | Path | None) -> tuple[torch.Tensor, str]:
    """The image to check the export on ([C,H,W] on 0..1) and its name: `image`, else fashion-scenes' first val image."""
    channels = model.spec["net_options"].get("in_channels", 3)
    if image is None:
        candidate = default_folder() / "val" / "000000.png"
        if not candidate.is_file():
            raise FileNotFoundError("resnet export of a detector checks it on a real image: give --image FILE "
                                    f"(or run `resnet data fashion-scenes`, whose {candidate} is the default)")
        image = candidate
    return read_image(image, channels).float().div(255), str(image)
