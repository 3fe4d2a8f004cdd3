"""`Classifier`: a trained classifier (a torch checkpoint or an exported ONNX file) behind one interface.

Both kinds go through the same test protocol code (resnet/evaluate/protocols.py): `prepare` is the protocol's
own view-making, `probabilities` its `scores` with the checkpoint's `InputNorm`; only the network differs
(a torch module under fp32 or bf16 autocast, or an ONNX Runtime session).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from resnet import precision
from resnet.evaluate.preprocess import InputNorm, input_norm
from resnet.evaluate.protocols import Protocol, checkpoint_protocol
from resnet.inference.onnx_net import OnnxNet, is_onnx

# what `--engine` takes: auto picks the fastest the file and the CPU allow (see docs/inference.md)
ENGINES = ("auto", "torch-fp32", "torch-bf16", "onnxruntime")


class Classifier:
    """One network and its test preprocessing; see the package docstring for the contract."""

    def __init__(self, net: nn.Module | OnnxNet, engine: str, device: str | torch.device = "cpu",
                 protocol: str = "center", amp: bool | None = None, norm: InputNorm | None = None) -> None:
        self.net, self.engine, self.device, self.amp = net, engine, torch.device(device), amp
        self.meta: dict = dict(getattr(net, "meta", None) or {})
        self.name: str = str(self.meta.get("model") or type(net).__name__)
        names = self.meta.get("class_names") or self.meta.get("classes")
        self.classes: list[str] | None = [str(n) for n in names] if names else None
        self.channels: int = net.conv1.in_channels if hasattr(net, "conv1") else int(net.in_channels)
        self.protocol: Protocol = checkpoint_protocol(net, protocol)
        self.norm = (norm if norm is not None else input_norm(net)).to(self.device)

    @property
    def has_mean(self) -> bool:
        """Whether the network carries its input mean (a checkpoint without one sees the image as it is)."""
        return getattr(self.net, "input_mean", None) is not None

    def prepare(self, image: torch.Tensor) -> torch.Tensor:
        """The views of one image (uint8 or 0..1 CHW tensor, or a PIL image) under the checkpoint's test protocol:
        [V, C, H, W] on 0..1, not yet normalised (a list of views for multiscale)."""
        return self.protocol.prepare(image)

    @torch.no_grad()
    def probabilities(self, views: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """Softmax scores [N, K] (on the CPU), averaged over each image's views, computed as one batch.

        `views`: a list of `prepare` outputs (one per image), or a tensor [N, V, C, H, W] or [N, C, H, W]."""
        if isinstance(views, torch.Tensor):
            batch = views[:, None] if views.dim() == 4 else views
        else:
            if not views:
                raise ValueError("no images to score")
            batch = self.protocol.collate([(v, 0) for v in views])[0]
        return self.protocol.scores(self.net, self.norm, batch, self.device, self.amp).float().cpu()

    def top(self, probs_row: torch.Tensor, k: int = 5) -> list[dict]:
        """The `k` most probable classes of one image's scores: [{index, class, probability}], best first."""
        values, indices = probs_row.topk(min(k, probs_row.numel()))
        names = self.classes
        return [{"index": int(i), "class": names[i] if names and i < len(names) else str(int(i)),
                 "probability": float(p)} for p, i in zip(values.tolist(), indices.tolist())]

    def __repr__(self) -> str:
        return f"Classifier({self.name}, engine={self.engine}, {len(self.classes or [])} classes)"


def torch_engine(device: str | torch.device, amp: bool | None) -> str:
    """The engine name of a torch network under `amp` (None: the device's fast path, resnet/precision.py)."""
    return "torch-bf16" if precision.amp_dtype(device, amp) is torch.bfloat16 else \
        "torch-fp16" if precision.amp_dtype(device, amp) is not None else "torch-fp32"


def _torch_amp(engine: str | None) -> bool | None:
    return {None: None, "auto": None, "torch": None, "torch-fp32": False, "torch-bf16": True}[engine]


def check_engine(source: str | Path, engine: str | None, device: str | torch.device) -> None:
    """One line when `engine` cannot run `source` (an ONNX file runs in ONNX Runtime, a checkpoint in torch)."""
    if engine not in (None, *ENGINES, "torch", "onnxruntime-fp32", "onnxruntime-int8"):
        raise ValueError(f"invalid --engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if is_onnx(source):
        if engine is not None and engine != "auto" and not engine.startswith("onnxruntime"):
            raise ValueError(f"--engine {engine}: {source} is an ONNX file, which runs in ONNX Runtime "
                             f"(--engine onnxruntime or auto)")
        if torch.device(device).type != "cpu":
            raise ValueError(f"--device {device}: ONNX files run on the CPU here (ONNX Runtime's CPU provider)")
    elif engine is not None and engine.startswith("onnxruntime"):
        raise ValueError(f"--engine {engine}: {source} is a torch checkpoint; write an ONNX file with "
                         f"`resnet export --checkpoint {source} --out model.onnx` (add --int8 for int8) and use that")


def load_network(source: str | Path, device: str | torch.device = "cpu", which: str = "best") -> nn.Module | OnnxNet:
    """The network of a checkpoint (a torch module, `resnet.checkpoint.load_model`) or of an ONNX file (`OnnxNet`,
    no torch network built); both carry `.meta`, `.input_mean`, `.input_std`."""
    if is_onnx(source):
        check_engine(source, None, device)
        return OnnxNet(source)
    from resnet.checkpoint import load_model

    return load_model(source, device, which)


def load_classifier(source: str | Path, device: str = "cpu", engine: str | None = None, *,
                    protocol: str = "center", which: str = "best") -> Classifier:
    """A `Classifier` for a checkpoint (run directory, .safetensors, a `resnet weights` name) or an ONNX file
    written by `resnet export` (fp32 or int8); `engine` as ENGINES (None or "auto": the fastest allowed)."""
    check_engine(source, engine, device)
    net = load_network(source, device, which)
    if isinstance(net, OnnxNet):
        if engine not in (None, "auto", "onnxruntime", f"onnxruntime-{net.precision}"):
            raise ValueError(f"--engine {engine}: {source} is an {net.precision} file (onnxruntime-{net.precision})")
        classifier = Classifier(net, f"onnxruntime-{net.precision}", "cpu", protocol, amp=False)
    else:
        amp = _torch_amp(engine)
        classifier = Classifier(net, torch_engine(device, amp), device, protocol, amp)
    classifier.meta.update(recorded_errors(source))
    return classifier


def recorded_errors(source: str | Path) -> dict:
    """{"recorded": {test_top1_error: ..., ...}} from a run directory's last evaluation (metrics.jsonl), or from an
    int8 file's quantization record; {} when nothing was recorded."""
    path = Path(source)
    if path.is_dir() and (path / "metrics.jsonl").is_file():
        import json

        rows = []
        for line in (path / "metrics.jsonl").read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
        errors = [r for r in rows if any(k.endswith("_top1_error") and k != "train_top1_error" for k in r)]
        if errors:
            return {"recorded": {k: v for k, v in errors[-1].items() if k.endswith("_error") or k == "step"}}
    return {}
