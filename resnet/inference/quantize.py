"""Post-training static int8 quantisation of an exported classifier, checked for accuracy before it is written.

ONNX Runtime's own tools do the work (`onnxruntime.quantization.quantize_static`): QDQ format (QuantizeLinear /
DequantizeLinear pairs that ORT fuses into int8 kernels), per-channel int8 weights, uint8 activations (U8S8, the
x86 format that VNNI/AMX instructions compute), the final fully-connected layer left in fp32, min-max ranges
calibrated on `calibration` images of the run's own training data (or a folder of images, or another dataset),
after ONNX Runtime's pre-processing (`quant_pre_process`). The int8 and fp32 ONNX files are then scored on
the held-out split side by side (one pass over the data through `resnet eval`'s code), both errors go into the
int8 file's metadata ("quantization"), and a relative accuracy loss above `max_loss` (1%: Intel Neural
Compressor's default; MLPerf asks 99% of fp32 for ResNet-50) writes nothing and says so in one line.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process

from resnet.atomic import atomic_write
from resnet.data import get_dataset
from resnet.data.sampling import balanced_subset
from resnet.evaluate.runner import evaluate_checkpoints
from resnet.export import export_onnx
from resnet.inference.classifier import load_classifier, load_network
from resnet.predict import gather_images, read_image

MAX_LOSS = 0.01  # relative top-1 accuracy loss allowed: (acc_fp32 - acc_int8) / acc_fp32


def relative_loss(fp32_error: float, int8_error: float) -> float:
    """(accuracy_fp32 - accuracy_int8) / accuracy_fp32, from top-1 errors (fractions)."""
    accuracy = 1.0 - fp32_error
    return (int8_error - fp32_error) / accuracy if accuracy > 0 else 0.0


def calibration_views(classifier, source: str | None, data: str | None, data_dir: str | None,
                      count: int) -> torch.Tensor:
    """`count` normalised inputs [N, C, H, W] for calibration, prepared as the classifier's test views: from a
    folder of images (`source` an existing folder: a seeded sample of its files, so a train/<class>/ tree gives
    every class, not the first in sorted order), a dataset's training split (`source` a dataset name), or the
    checkpoint's own dataset (`source` None, `data`) - a seeded class-balanced sample."""
    if source is not None and Path(source).is_dir():
        files = gather_images([source])
        files = random.Random(0).sample(files, min(count, len(files)))
        views = [classifier.prepare(read_image(f, classifier.channels))[0] for f in files]
    else:
        name = source or data
        if not name:
            raise ValueError("--int8: the checkpoint does not say which dataset it was trained on; give "
                             "--calibration-data (a dataset name or a folder of images)")
        dataset = balanced_subset(get_dataset(name, "train", data_dir, transform=classifier.prepare), count, seed=0)
        views = [dataset[i][0][0] for i in range(len(dataset))]
    if not views:
        raise ValueError(f"--calibration-data {source}: no images to calibrate on")
    return classifier.norm(torch.stack(views).float())


def calibration_reader(inputs: torch.Tensor, input_name: str, batch_size: int = 32):
    """An ONNX Runtime CalibrationDataReader over `inputs` in batches."""
    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(np.ascontiguousarray(inputs[i:i + batch_size].numpy())
                                for i in range(0, len(inputs), batch_size))

        def get_next(self) -> dict | None:
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch}

    return Reader()


def quantize_onnx(fp32: Path, out: Path, inputs: torch.Tensor) -> dict:
    """Write `out`, the int8 QDQ model of `fp32` calibrated on `inputs`; returns how it was quantised."""
    logging.getLogger("root").setLevel(logging.ERROR)  # ORT's advice and warnings on every call
    graph = onnx.load(str(fp32))
    reader = calibration_reader(inputs, graph.graph.input[0].name)
    # ORT's pre-processing (shape inference, basic graph optimisation) removes the Identity nodes that folded BN
    # leaves between Conv and Relu; with them in place ORT cannot fuse Q/DQ into QLinearConv (measured: 6 of 53
    # ResNet-50 convs ran as int8, the rest as fp32 Conv behind DequantizeLinear, slower than the fp32 file)
    prepared = out.with_name(out.stem + ".pre.onnx")
    quant_pre_process(str(fp32), str(prepared))
    # the classifier (fc: a few thousand of the millions of multiply-adds) stays fp32: quantised logits lie on a
    # grid, and exact ties between the top two classes (23 of Fashion-MNIST's 10,000 test images for ResNet-20)
    # would then decide top-1 by index order
    classifier = [n.name for n in graph.graph.node if n.op_type in ("Gemm", "MatMul")]
    try:
        quantize_static(str(prepared), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=classifier)
    finally:
        prepared.unlink(missing_ok=True)
    quantized = onnx.load(str(out))
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(graph.metadata_props)  # the fp32 export's preprocessing and checkpoint meta
    onnx.save(quantized, str(out))
    return {"format": "QDQ", "weights": "int8 per channel", "activations": "uint8", "calibration_method": "minmax",
            "fp32_nodes": classifier, "tool": "onnxruntime.quantization.quantize_static"}


def held_out_errors(files: list[Path], data: str, data_dir: str | None, limit: int | None,
                    progress: bool) -> dict:
    """`resnet eval` of the ONNX files side by side on the held-out split: {split, images, members}."""
    result = evaluate_checkpoints([str(f) for f in files], data, data_dir=data_dir, split="test", limit=limit,
                                  progress=progress, load=load_network, num_workers=0)
    return {"split": result["split"], "data": data, "members": result["members"]}


def _add_quantization(path: Path, record: dict) -> None:
    graph = onnx.load(str(path))
    entry = graph.metadata_props.add()
    entry.key, entry.value = "quantization", json.dumps(record)
    onnx.save(graph, str(path))


def export_int8(model: torch.nn.Module, out: str | Path, *, image_size: int, opset: int = 17, meta: dict,
                calibration: int = 512, calibration_data: str | None = None, data_dir: str | None = None,
                max_loss: float = MAX_LOSS, eval_limit: int | None = None, progress: bool = True) -> dict:
    """Export `model` to fp32 ONNX (checked against torch), quantise it to int8, score both on the held-out
    split and write the int8 file to `out` (atomically) only when its relative accuracy loss <= `max_loss`."""
    out = Path(out)
    data = meta.get("dataset")
    with tempfile.TemporaryDirectory(prefix="resnet-int8-") as tmp:
        fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        report = export_onnx(model, fp32, image_size=image_size, opset=opset, meta=meta)
        classifier = load_classifier(fp32)
        inputs = calibration_views(classifier, calibration_data, data, data_dir, calibration)
        record = quantize_onnx(fp32, int8, inputs)
        record["calibration"] = {"images": len(inputs), "source": calibration_data or f"{data} train"}
        if not data:
            raise ValueError("--int8: the checkpoint does not say which dataset it was trained on, so its held-out "
                             "error cannot be checked")
        scored = held_out_errors([fp32, int8], data, data_dir, eval_limit, progress)
        fp32_error, int8_error = (m["top1_error"] for m in scored["members"])
        loss = relative_loss(fp32_error, int8_error)
        record.update({"fp32_top1_error": fp32_error, "int8_top1_error": int8_error, "relative_loss": loss,
                       "max_relative_loss": max_loss, "held_out": {"data": data, "split": scored["split"],
                                                                   "images": scored["members"][0]["images"]}})
        if loss > max_loss:
            raise ValueError(f"{out}: int8 top-1 error {100 * int8_error:.2f}% against fp32 {100 * fp32_error:.2f}% "
                             f"on {record['held_out']['images']} held-out images is a {100 * loss:.2f}% relative "
                             f"loss (> {100 * max_loss:g}%); nothing written "
                             f"(--max-int8-loss {max(0.05, 2 * loss):.2f} "
                             f"accepts it, or calibrate on more images with --calibration)")
        _add_quantization(int8, record)
        atomic_write(out, lambda path: shutil.copyfile(int8, path))
    report.update({"out": str(out), "int8": record, "bytes": out.stat().st_size})
    return report
