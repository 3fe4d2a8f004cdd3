"""The served network: a classifier or a detector behind one small interface, answering as `resnet predict`.

Classifiers are `resnet.inference` classifiers, as `resnet predict` loads them (a checkpoint in torch, an ONNX file
written by `resnet export` in ONNX Runtime, fp32 or int8): the same `prepare`, `probabilities` and `top`.
Detectors go through `resnet.detection.predict.detect`, the function `resnet predict` calls for each image. So a
served answer equals `resnet predict --json` on the same file.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from resnet.data.folder import MAX_PIXELS
from resnet.detection import is_detector_checkpoint
from resnet.detection.models import load_detector
from resnet.detection.predict import detect
from resnet.inference import load_classifier


class Served:
    """What the server needs of a network: decode settings, prepare (any thread), run a batch (the worker
    thread), and the JSON answer of one image."""

    task = ""
    name = ""
    channels = 3
    min_side: int | None = None

    def prepare(self, image: torch.Tensor) -> object:
        raise NotImplementedError

    def run(self, batch: list) -> list:
        raise NotImplementedError

    def answer(self, output: object, image: str, top_k: int) -> dict:
        raise NotImplementedError

    def input_card(self) -> dict:
        raise NotImplementedError

    def recorded(self, source: str) -> dict:
        """The held-out error or AP the run recorded ({} when none)."""
        return held_out(source)


class ServedClassifier(Served):
    task = "classification"

    def __init__(self, classifier) -> None:  # a resnet.inference.Classifier
        self.classifier = classifier
        self.name, self.channels = classifier.name, classifier.channels
        self.min_side = classifier.protocol.min_side
        self.classes = classifier.classes or []
        self.meta = classifier.meta

    def prepare(self, image: torch.Tensor) -> object:
        return self.classifier.prepare(image)

    def run(self, batch: list) -> list:
        return list(self.classifier.probabilities(batch))

    def answer(self, output: object, image: str, top_k: int) -> dict:
        return {"image": image, "top": self.classifier.top(output, top_k), "engine": self.classifier.engine}

    def recorded(self, source: str) -> dict:
        """resnet.inference's record: the run's last held-out errors, and an int8 file's quantization check."""
        return {**self.meta.get("recorded", {}), **({"quantization": self.meta["quantization"]}
                                                      if self.meta.get("quantization") else {})}

    def input_card(self) -> dict:
        meta = self.meta
        size = meta.get("image_size")
        return {"channels": self.channels, "image_size": size[-1] if isinstance(size, (list, tuple)) else size,
                "style": meta.get("style"), "resize": meta.get("resize_size"), "engine": self.classifier.engine,
                "protocol": self.classifier.protocol.name,
                "normalisation": "per-pixel mean subtracted" + (", divided by std" if meta.get("input_std") else "")}


class ServedDetector(Served):
    task = "detection"

    def __init__(self, model: nn.Module, device: str = "cpu", score_threshold: float = 0.5) -> None:
        self.model, self.device, self.score_threshold = model, device, score_threshold
        self.meta = getattr(model, "meta", {}) or {}
        self.name = str(getattr(model, "name", None) or self.meta.get("model") or "detector")
        self.channels = model.spec["net_options"].get("in_channels", 3)
        self.classes = [str(c) for c in self.meta.get("class_names", [])]

    def prepare(self, image: torch.Tensor) -> object:
        return image  # the detector's own transform resizes and normalises (GeneralizedRCNNTransform)

    def run(self, batch: list) -> list:
        """One image at a time, as `resnet predict` runs them: batched detectors pad images to a common size,
        which would move boxes near the padded edges."""
        return [detect(self.model, image, "", device=self.device, score_threshold=self.score_threshold)
                for image in batch]

    def answer(self, output: object, image: str, top_k: int) -> dict:
        return {**output, "image": image}

    def input_card(self) -> dict:
        transform = self.model.transform
        return {"channels": self.channels, "min_size": list(transform.min_size), "max_size": transform.max_size,
                "score_threshold": self.score_threshold, "engine": "torch",
                "normalisation": "the detector's own (torchvision GeneralizedRCNNTransform)"}


def load_served(source: str, device: str = "cpu", protocol: str = "center", engine: str | None = None,
                score_threshold: float = 0.5) -> Served:
    """The network `resnet predict --checkpoint source` would use, ready to serve (`engine`: resnet.inference's)."""
    if is_detector_checkpoint(source):
        if engine not in (None, "auto", "torch", "torch-fp32"):
            raise ValueError(f"--engine {engine}: detectors run in torch (fp32)")
        return ServedDetector(load_detector(source, device), device, score_threshold)
    return ServedClassifier(load_classifier(source, device, engine, protocol=protocol))


def held_out(source: str) -> dict:
    """A detector run's last recorded held-out metrics (keys of the val/test splits ending in error, AP or AP50) when
    `source` is a run directory or a checkpoint inside one (a folder with config.json and metrics.jsonl); {}
    otherwise (a lone checkpoint file, a published weights name)."""
    path = Path(source)
    if not path.exists():
        return {}
    path = path.resolve()
    candidates = [path] if path.is_dir() else list(path.parents)[:3]
    run = next((c for c in candidates if (c / "metrics.jsonl").is_file() and (c / "config.json").is_file()), None)
    if run is None:
        return {}
    found: dict = {}
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return {}
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            found.update({k: v for k, v in row.items() if k.startswith(("val_", "test_"))
                          and k.endswith(("error", "AP", "AP50")) and isinstance(v, (int, float))})
    return found


def model_card(served: Served, source: str, max_pixels: int = MAX_PIXELS) -> dict:
    """GET /v1/model: name, task, classes, input and preprocessing, source checkpoint, held-out metrics."""
    return {"name": served.name, "task": served.task, "classes": list(served.classes), "input": served.input_card(),
            "max_pixels": max_pixels, "source": str(source), "held_out": served.recorded(source),
            "dataset": served.meta.get("dataset") or served.meta.get("data")}
