"""An exported ONNX classifier run by ONNX Runtime, shaped like a loaded checkpoint for the evaluation code.

`OnnxNet` reads the file's metadata_props (written by `resnet.export.onnx_metadata`: the checkpoint's metadata
under "resnet", input_mean, input_std, input_size, resize_size, style, class_names; int8 files also
"quantization") and exposes what the test protocols and `InputNorm` read from a torch checkpoint (`.meta`,
`.input_mean`, `.input_std`), and `__call__(x) -> logits` on a normalised float batch. No torch network is built:
the file is the network, so what is scored is exactly what is deployed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


def is_onnx(source: str | Path) -> bool:
    """True for an .onnx file name (the suffix decides; the file is checked when it is read)."""
    return str(source).lower().endswith(".onnx")


def read_props(path: str | Path) -> dict[str, str]:
    """The metadata_props of an ONNX file as a dict; one line naming the file when it is missing or not ONNX."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # noqa: BLE001 - onnx raises DecodeError and others for a bad file
        raise ValueError(f"{path}: not a readable ONNX file ({type(error).__name__})") from None
    return {p.key: p.value for p in model.metadata_props}


def _json(props: dict[str, str], key: str, path: Path, default=None):
    if key not in props:
        return default
    try:
        return json.loads(props[key])
    except ValueError:
        raise ValueError(f"{path}: its metadata entry {key!r} is not valid JSON") from None


def onnx_meta(path: str | Path, props: dict[str, str] | None = None) -> dict:
    """The checkpoint metadata an ONNX file carries, completed with its preprocessing entries (style, image_size,
    resize_size, class_names) and the int8 quantization record, when there is one."""
    path = Path(path)
    props = read_props(path) if props is None else props
    if "input_size" not in props:
        raise ValueError(f"{path}: no input_size in its metadata; export it with `resnet export`")
    meta = dict(_json(props, "resnet", path, {}) or {})
    channels, height, width = _json(props, "input_size", path)
    meta.update({"image_size": int(width), "style": props.get("style") or meta.get("style") or "imagenet",
                 "resize_size": _json(props, "resize_size", path, meta.get("resize_size")), "channels": int(channels)})
    names = _json(props, "class_names", path, None)
    if names:
        meta["class_names"] = names
    quantization = _json(props, "quantization", path, None)
    if quantization:
        meta["quantization"] = quantization
    meta.setdefault("model", path.stem)
    return meta


def session_options(threads: int | None = None):
    """ONNX Runtime session options: all graph optimisations, `threads` intra-op threads (None: ORT's default,
    one per physical core)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    return options


class OnnxNet:
    """An ONNX classifier file under ONNX Runtime (CPU): logits of normalised batches, and the file's metadata."""

    amp = False  # the scores are the file's own arithmetic: no autocast or channels_last around it

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        props = read_props(self.path)
        self.meta = onnx_meta(self.path, props)
        mean, std = _json(props, "input_mean", self.path), _json(props, "input_std", self.path)
        self.input_mean = None if mean is None else torch.tensor(mean, dtype=torch.float32)
        self.input_std = None if std is None else torch.tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
        try:
            self.session = ort.InferenceSession(str(self.path), session_options(threads),
                                                providers=["CPUExecutionProvider"])
        except Exception as error:  # noqa: BLE001 - ORT raises its own Fail/InvalidGraph types
            raise ValueError(f"{self.path}: ONNX Runtime cannot load it ({' '.join(str(error).split())[:200]})") \
                from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        self.input_name = inputs[0].name
        self.in_channels = int(self.meta["channels"])
        self.num_classes = int(outputs[0].shape[-1]) if isinstance(outputs[0].shape[-1], int) else None
        self.precision = "int8" if self.meta.get("quantization") else "fp32"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [N, K] of a normalised float batch [N, C, H, W] of the file's input size."""
        size = self.meta["image_size"]
        if tuple(x.shape[-2:]) != (size, size):
            raise ValueError(f"{self.path}: the file takes {size}x{size} inputs, not {tuple(x.shape[-2:])} "
                             f"(multiscale testing needs the checkpoint, not its ONNX file)")
        array = np.ascontiguousarray(x.detach().float().cpu().numpy())
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])

    def to(self, *args, **kwargs) -> OnnxNet:
        """ONNX Runtime runs where the session is (the CPU): moving is a no-op, as for a model already there."""
        return self

    def eval(self) -> OnnxNet:
        return self
