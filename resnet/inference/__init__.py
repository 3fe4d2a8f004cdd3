"""Inference with a trained classifier: one interface over torch checkpoints and exported ONNX files.

Contract (used by `resnet predict`, `resnet eval --checkpoint model.onnx` and the HTTP server):

    load_classifier(source, device="cpu", engine=None, *, protocol="center", which="best") -> Classifier

`source` is anything `resnet predict --checkpoint` takes (a run directory, a .safetensors checkpoint, a
`resnet weights` name or torch file) or an .onnx file written by `resnet export` (fp32 or `--int8`). For an
ONNX file no torch network is built: ONNX Runtime runs the file, with the preprocessing its metadata records.
`engine`: None or "auto" (a checkpoint: torch with the device's fast path, bf16 autocast + channels_last on CPUs
with native bf16; an ONNX file: ONNX Runtime), "torch-fp32", "torch-bf16" or "onnxruntime"; an engine that cannot
run the source is a one-line ValueError.

A `Classifier` has
- `.name`      the model name (e.g. "resnet20"),
- `.classes`   the class names (list of str) or None,
- `.channels`  input channels (1 or 3),
- `.engine`    what computes the scores: "torch-fp32", "torch-bf16", "onnxruntime-fp32", "onnxruntime-int8",
- `.meta`      the checkpoint's metadata (for ONNX files: the one recorded at export, plus the file's input_size,
               style, resize_size; int8 files: "quantization" with the int8 and fp32 held-out top-1 errors
               measured side by side); a run directory's last recorded held-out errors under "recorded",
- `.prepare(image)`  the checkpoint's own test preprocessing of one uint8 CHW tensor (or PIL image): its views
               [V, C, H, W] on 0..1, the same `Protocol.prepare` that `resnet eval` and `resnet predict` use,
- `.probabilities(views)`  softmax scores [N, K] for a list of `prepare` outputs (or a batch tensor
               [N, V, C, H, W] / [N, C, H, W]), computed as one batch,
- `.top(probs_row, k)`  [{"index", "class", "probability"}] of the k most probable classes, best first.
"""

from __future__ import annotations

from resnet.inference.classifier import ENGINES, Classifier, load_classifier, load_network
from resnet.inference.onnx_net import OnnxNet, is_onnx

__all__ = ["ENGINES", "Classifier", "OnnxNet", "is_onnx", "load_classifier", "load_network"]
