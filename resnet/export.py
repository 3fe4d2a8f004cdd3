"""ONNX export for inference: BN folded into the convolutions, a dynamic batch dimension, and a check
of the written file against ONNX Runtime.

Folding uses torch's own `fuse_conv_bn_eval` on every conv -> BN pair of the network (the stem,
each block's convs, the projection shortcuts); the BN becomes an identity. Doing it here, rather than
relying on an exporter's optimisation, makes the folded model a PyTorch module that can be compared
with the original, and gives the same graph from either exporter. `fold_bn=False` keeps the
BatchNormalization nodes (for inspection or further training in ONNX tooling). The exporter is the
TorchScript-based one (`dynamo=False`): on this code it is several times faster than the
torch.export-based one and gives the same graph of Conv/Relu/Add/GlobalAveragePool/Gemm.
"""

from __future__ import annotations

import copy
import json
import math
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from resnet.atomic import atomic_write
from resnet.checkpoint import check_finite
from resnet.data.transforms import default_resize
from resnet.evaluate.preprocess import input_std

TOLERANCE = 1e-4
# the opsets each exporter writes as asked (torch.onnx's documented ranges): (first, last, default)
OPSETS = {"torchscript": (7, 20, 17), "dynamo": (18, 23, 18)}


def check_opset(opset: int | None, dynamo: bool) -> int:
    """The opset to export with (the exporter's default for None), or one line naming --opset's range."""
    first, last, default = OPSETS["dynamo" if dynamo else "torchscript"]
    if opset is None:
        return default
    if not first <= opset <= last:
        exporter = "the torch.export-based exporter (--dynamo)" if dynamo else "the TorchScript exporter"
        raise ValueError(f"invalid --opset {opset}: {exporter} writes opsets {first} to {last}")
    return opset


def _conv_bn_pairs(model: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """(parent, conv attribute, BN attribute) for each conv directly followed by its BN."""
    pairs = []
    for parent in model.modules():
        if isinstance(parent, nn.Sequential):
            children = list(parent.named_children())
            for (cname, conv), (bname, bn) in zip(children, children[1:]):
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    pairs.append((parent, cname, bname))
            continue
        for i in range(1, 4):  # conv1/bn1 (stem and blocks), conv2/bn2, conv3/bn3
            conv, bn = getattr(parent, f"conv{i}", None), getattr(parent, f"bn{i}", None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                pairs.append((parent, f"conv{i}", f"bn{i}"))
    return pairs


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode with each BN folded into the conv before it (same outputs)."""
    folded = copy.deepcopy(model).eval()
    for parent, conv_name, bn_name in _conv_bn_pairs(folded):
        fused = fuse_conv_bn_eval(getattr(parent, conv_name), getattr(parent, bn_name))
        setattr(parent, conv_name, fused)
        setattr(parent, bn_name, nn.Identity())
    return folded


def _export(model: nn.Module, example: torch.Tensor, path: str, opset: int, dynamo: bool, fold_bn: bool) -> None:
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            batch = torch.export.Dim("batch", min=1)
            torch.onnx.export(model, (example,), path, dynamo=True, input_names=["input"], output_names=["logits"],
                              dynamic_shapes=({0: batch},), opset_version=opset, external_data=False)
        else:
            # EVAL mode would let this exporter fold BN itself; PRESERVE keeps the nodes when asked to
            mode = torch.onnx.TrainingMode.EVAL if fold_bn else torch.onnx.TrainingMode.PRESERVE
            torch.onnx.export(model, (example,), path, dynamo=False, input_names=["input"], output_names=["logits"],
                              dynamic_axes=axes, opset_version=opset, training=mode)


def onnx_metadata(model: nn.Module, image_size: int, meta: dict | None = None) -> dict[str, str]:
    """What a user of the ONNX file needs to prepare its input, as metadata_props (JSON values):
    input_mean ([C,H,W] or [C,1,1] on 0..1), input_std (when the weights have one), input_size [C,H,W],
    resize_size (shorter side before the centre crop), style, class_names; and the checkpoint's metadata
    under "resnet"."""
    meta = dict(getattr(model, "meta", None) or {}) if meta is None else dict(meta)
    style = meta.get("style") or ("small" if getattr(model.spec, "family", "") == "cifar" else "imagenet")
    resize = image_size if style == "small" else meta.get("resize_size") or default_resize(image_size)
    props = {"resnet": json.dumps(meta), "input_size": json.dumps([model.conv1.in_channels, image_size, image_size]),
             "resize_size": json.dumps(resize), "style": style,
             "class_names": json.dumps(meta.get("class_names") or meta.get("classes") or [])}
    mean = getattr(model, "input_mean", None)
    if mean is not None:
        props["input_mean"] = json.dumps(mean.detach().cpu().float().tolist())
    std = input_std(model)
    if std is not None:
        props["input_std"] = json.dumps(std.flatten().tolist())
    return props


def _add_metadata(path: str, props: dict[str, str]) -> None:
    """Store string key/values as the ONNX file's metadata_props."""
    import onnx

    graph = onnx.load(path)
    for key, value in props.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(graph, path)


def check_onnx(path: str | Path, model: nn.Module, input_shape: tuple[int, ...],
               batch_sizes: tuple[int, ...] = (1, 3), seed: int = 0) -> float:
    """Largest |ONNX Runtime - PyTorch| over random inputs at several batch sizes."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    model = model.eval()
    for b in batch_sizes:
        x = torch.randn(b, *input_shape, generator=generator)
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {name: x.numpy()})[0]
        if got.shape != expected.shape:
            raise ValueError(f"{path}: ONNX output shape {got.shape} != PyTorch {expected.shape} at batch {b}")
        diff = float(abs(got - expected).max())
        if not math.isfinite(diff):  # max(worst, nan) would hide it
            raise ValueError(f"{path}: ONNX Runtime or PyTorch gives NaN or infinite outputs at batch {b}")
        worst = max(worst, diff)
    return worst


def export_onnx(model: nn.Module, out: str | Path, *, image_size: int, opset: int = 17, fold_bn: bool = True,
                dynamo: bool = False, meta: dict | None = None, tolerance: float = TOLERANCE) -> dict:
    """Write `model` as ONNX (atomically) and check it against ONNX Runtime; returns the measured differences.

    The file's metadata_props carry the input preprocessing (`onnx_metadata`); `meta` replaces the
    model's own `.meta` there.

    The reference for the check is the original (unfolded) model, so the reported difference covers
    both the folding and the export. A difference above `tolerance` is an error and no file is left.
    """
    out = Path(out)
    model = model.to("cpu").eval()
    check_finite(model.state_dict(), f"the network to export to {out}")
    in_channels = model.conv1.in_channels
    shape = (in_channels, image_size, image_size)
    net = fold_batchnorm(model) if fold_bn else model
    generator = torch.Generator().manual_seed(1)
    example = torch.randn(2, *shape, generator=generator)
    with torch.no_grad():
        fold_diff = float((net(example) - model(example)).abs().max()) if fold_bn else 0.0
    report = {"out": str(out), "opset": opset, "fold_bn": fold_bn, "input_shape": ["batch", *shape]}
    props = onnx_metadata(model, image_size, meta)
    report["metadata"] = sorted(props)

    def write(tmp: str) -> None:
        _export(net, example, tmp, opset, dynamo, fold_bn)
        _add_metadata(tmp, props)
        report["max_abs_diff"] = check_onnx(tmp, model, shape)
        if report["max_abs_diff"] >= tolerance:
            raise ValueError(f"{out}: ONNX Runtime differs from PyTorch by {report['max_abs_diff']:.3g} "
                             f"(>= {tolerance:g}); nothing written")

    atomic_write(out, write)
    report["fold_max_abs_diff"] = fold_diff
    report["batchnorm_folded"] = len(_conv_bn_pairs(model)) if fold_bn else 0
    return report
