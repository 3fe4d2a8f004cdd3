"""Checkpoints: weights as safetensors, training state as a tensors-only torch file.

A checkpoint named `STEM` is two files: `STEM.safetensors` (the state dict, the input mean as
`input_mean` and, for weights trained on (x - mean) / std, the std as `input_std`, and JSON metadata: model name, options, classes, dataset, image size) and, for
training checkpoints, `STEM.state.pt` (optimizer, scheduler, scaler, step, RNG states), loaded
with `weights_only=True`. Every file is written to a temporary name and renamed, so a failure
mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

META_KEY = "resnet"
MEAN_KEY = "input_mean"
STD_KEY = "input_std"


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)`, then rename tmp_path onto `path` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def unwrap(model: nn.Module) -> nn.Module:
    """The bare network inside DDP / torch.compile wrappers."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def model_meta(model: nn.Module, **extra: Any) -> dict:
    """What is needed to rebuild `model` and use it: registry name, options, plus `extra`."""
    net = unwrap(model)
    meta = {"model": net.name, "options": dict(net.options)}
    meta.update(getattr(net, "meta", {}) or {})
    meta.update(extra)
    return meta


def save_weights(path: str | Path, model: nn.Module, meta: dict | None = None,
                 input_mean: torch.Tensor | None = None, input_std: torch.Tensor | None = None) -> Path:
    """Write the model's state dict (and input mean and std) as safetensors with JSON metadata."""
    net = unwrap(model)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    for key, value, attribute in ((MEAN_KEY, input_mean, "input_mean"), (STD_KEY, input_std, "input_std")):
        value = getattr(net, attribute, None) if value is None else value
        if value is not None:
            tensors[key] = value.detach().to("cpu", torch.float32).contiguous()
    metadata = {META_KEY: json.dumps(meta if meta is not None else model_meta(net))}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def weights_path(path: str | Path, which: str = "best") -> Path:
    """Resolve a run directory (its `checkpoints/{which}`), a checkpoint stem or a .safetensors file."""
    path = Path(path)
    if path.is_dir():
        for name in (which, "last"):
            candidate = path / "checkpoints" / f"{name}.safetensors"
            if candidate.exists():
                return candidate
        raise FileNotFoundError(f"{path}: no checkpoints/{which}.safetensors or checkpoints/last.safetensors in this run directory")
    if path.suffix != ".safetensors" and path.with_suffix(".safetensors").exists():
        return path.with_suffix(".safetensors")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    return path


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict, torch.Tensor | None]:
    """(state dict, metadata, input mean or None) from a .safetensors checkpoint.

    A stored `input_std` tensor is returned in the metadata as `input_std` (a list, one value per channel).
    """
    path = weights_path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get(META_KEY, "{}"))
        tensors = load_file(str(path))
    except (SafetensorError, OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable safetensors checkpoint ({e})") from None
    mean = tensors.pop(MEAN_KEY, None)
    std = tensors.pop(STD_KEY, None)
    if std is not None:
        meta["input_std"] = std.flatten().tolist()
    return tensors, meta, mean


def load_state_dict_checked(model: nn.Module, state: dict[str, torch.Tensor], source: str, target: str) -> None:
    """load_state_dict(strict=True), with one clear error naming both models when they differ."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
              for k in own.keys() & state.keys() if state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if items:
                parts.append(f"{label}: {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}")
        raise ValueError(f"checkpoint {source} does not fit {target}: {'; '.join(parts)}")
    model.load_state_dict(state, strict=True)


def load_model(path: str | Path, device: str | torch.device = "cpu", which: str = "best") -> nn.Module:
    """The trained network from a run directory or a .safetensors checkpoint, in eval mode.

    The returned model carries `.meta` (classes, dataset, image size, ...), `.input_mean` and `.input_std`
    ([C,1,1], or None when the weights expect only the mean subtracted).
    """
    from resnet.models import create_model

    file = weights_path(path, which)
    state, meta, mean = load_weights(file)
    if "model" not in meta:
        raise ValueError(f"{file}: no model name in its metadata; was it written by `resnet`?")
    model = create_model(meta["model"], **meta.get("options", {}))
    load_state_dict_checked(model, state, str(file), meta["model"])
    model.meta = meta
    model.input_mean = mean
    std = meta.get("input_std")
    model.input_std = None if std is None else torch.tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
    return model.to(device).eval()


def save_training_state(path: str | Path, state: dict) -> Path:
    """Write the training state (tensors and plain Python values only) atomically."""
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_training_state(path: str | Path) -> dict:
    """Read a training state with weights_only=True: no pickled code runs."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no training state to resume from") from None
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        raise ValueError(f"{path}: unreadable training state ({type(e).__name__}: {e})") from None
