"""Checkpoints: weights as safetensors, training state as a tensors-only torch file.

Weights are a `.safetensors` file (the state dict, the input mean as `input_mean` and, for weights
trained on (x - mean) / std, the std as `input_std`, and JSON metadata: model name, options, classes, dataset, image size). A training checkpoint is a folder
`checkpoints/step-NNNNNNN/` holding `model.safetensors` and `state.pt` (optimizer, scheduler,
scaler, step, RNG states; loaded with `weights_only=True`); the symlinks `checkpoints/last` and
`checkpoints/best` point at such folders and are switched by one rename each, so the weights and
the state of `last` always belong to the same step. `last.safetensors`, `last.state.pt` and
`best.safetensors` are fixed links through those pointers. Every file is written to a temporary
name (with the user's umask) and renamed, so a failure mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from resnet.atomic import atomic_write, fsync, temporary_name
from resnet.faults import fault_point
from resnet.models import build_model

META_KEY = "resnet"
MEAN_KEY = "input_mean"
WEIGHTS, STATE = "model.safetensors", "state.pt"  # the two files of a training checkpoint folder
# fixed paths kept for readers of the older two-file layout: link name -> (pointer, file in the folder)
LINKS = {"last.safetensors": ("last", WEIGHTS), "last.state.pt": ("last", STATE), "best.safetensors": ("best", WEIGHTS)}
STD_KEY = "input_std"



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

    def write(tmp: str) -> None:
        try:
            save_file(tensors, tmp, metadata=metadata)
        except SafetensorError as e:  # an I/O error (a full disk) inside safetensors
            raise OSError(None, str(e)) from e

    return atomic_write(path, write)


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
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: its {META_KEY!r} metadata is a {type(meta).__name__}, not a JSON object")
    mean = tensors.pop(MEAN_KEY, None)
    std = tensors.pop(STD_KEY, None)
    if std is not None:
        meta["input_std"] = std.flatten().tolist()
    return tensors, meta, mean


META_TYPES = {"model": str, "options": dict, "classes": list, "class_names": list, "dataset": str, "style": str,
              "image_size": (int, list), "resize_size": int, "input_std": list}


def check_meta(meta: dict, source: str) -> None:
    """One line naming the file and field when a checkpoint's metadata has a field of the wrong type."""
    if not isinstance(meta.get("model"), str):
        raise ValueError(f"{source}: no model name in its metadata; was it written by `resnet`?")
    for key, kind in META_TYPES.items():
        value = meta.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise ValueError(f"{source}: metadata field {key!r} has the wrong type ({type(value).__name__})")


def check_finite(tensors: dict[str, torch.Tensor], source: str) -> None:
    """Refuse weights holding NaN or infinity (a diverged run): nothing useful can be computed from them."""
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"{source}: {len(bad)} tensor(s) hold NaN or infinite values ({', '.join(bad[:3])}"
                         f"{', ...' if len(bad) > 3 else ''}); the weights are unusable (did training diverge?)")


def check_fits(model: nn.Module, meta: dict, mean: torch.Tensor | None, source: str) -> None:
    """One line naming the file when the metadata's class lists or the stored input mean or std do not fit the
    network built from it (a hand-edited or foreign file): else predict would mix names with indices, and the
    normalisation would fail deep inside the first batch."""
    outputs = getattr(getattr(model, "fc", None), "out_features", None)
    for key in ("class_names", "classes"):
        names = meta.get(key)
        if outputs is not None and names is not None and len(names) != outputs:
            raise ValueError(f"{source}: metadata field {key!r} lists {len(names)} classes but the classifier has "
                             f"{outputs} outputs; the checkpoint is inconsistent (re-save it with one name per class)")
    channels = getattr(getattr(model, "conv1", None), "in_channels", None)
    if mean is not None:
        shape = tuple(mean.shape)
        if mean.dim() not in (1, 3) or 0 in shape or (channels is not None and shape[0] != channels):
            c = channels or "C"
            raise ValueError(f"{source}: its stored input mean has shape {list(shape)}; a {c}-channel network needs "
                             f"[{c}], [{c}, 1, 1] or [{c}, H, W]")
    std = meta.get("input_std")
    if std is not None and channels is not None and len(std) not in (1, channels):
        raise ValueError(f"{source}: its input_std has {len(std)} values; a {channels}-channel network needs "
                         f"{channels} (or 1)")


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


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", which: str = "best") -> nn.Module:
    """The trained network from one of our checkpoints (a run directory or a .safetensors file), in eval mode.

    The returned model carries `.meta` (classes, dataset, image size, ...), `.input_mean` and `.input_std`
    ([C,1,1], or None when the weights expect only the mean subtracted). `resnet.load_model` (in weights.py)
    also takes published weights by name or file, and comes here for everything else.
    """
    file = weights_path(path, which)
    state, meta, mean = load_weights(file)
    check_meta(meta, str(file))
    check_finite({**state, **({MEAN_KEY: mean} if mean is not None else {})}, str(file))
    try:
        model = build_model(meta["model"], **meta.get("options", {}))
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"{file}: its metadata does not describe a network we can build ({e})") from None
    load_state_dict_checked(model, state, str(file), meta["model"])
    check_fits(model, meta, mean, str(file))
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


# ----------------------------------------------------------------------------- training checkpoints

def save_training_checkpoint(ckpt_dir: str | Path, step: int, model: nn.Module, meta: dict, state: dict,
                             best: bool = False) -> Path:
    """Write weights and state of `step` into `ckpt_dir/step-N/`, then switch `best` (when best) and `last` to it.

    Until a pointer is switched nothing a reader sees has changed; a crash leaves at worst an unreferenced
    folder, removed by `prune_checkpoints`. `best` is switched first so that `last` never claims a best
    model that `best` does not hold.
    """
    ckpt_dir = Path(ckpt_dir)
    folder = ckpt_dir / f"step-{step:07d}"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        save_weights(folder / WEIGHTS, model, meta)
        fault_point("checkpoint:between-files")
        save_training_state(folder / STATE, state)
    except BaseException:
        prune_checkpoints(ckpt_dir)  # the unfinished folder, unless a pointer still names it
        raise
    fault_point("checkpoint:before-switch")
    for pointer in ("best", "last") if best else ("last",):
        _symlink_atomic(ckpt_dir / pointer, folder.name)
    for link, (pointer, file) in LINKS.items():
        target = f"{pointer}/{file}"
        if (ckpt_dir / pointer).is_symlink() and not _links_to(ckpt_dir / link, target):
            _symlink_atomic(ckpt_dir / link, target)
    fault_point("checkpoint:before-prune")
    prune_checkpoints(ckpt_dir)
    return folder


def _symlink_atomic(path: Path, target: str) -> None:
    """Make `path` a symlink to `target` with one rename (replacing a file or link already there)."""
    tmp = temporary_name(path)
    os.symlink(target, tmp)
    os.replace(tmp, path)
    fsync(path.parent)


def _links_to(path: Path, target: str) -> bool:
    return path.is_symlink() and os.readlink(path) == target


def prune_checkpoints(ckpt_dir: str | Path) -> None:
    """Remove the `step-*` folders that neither `last` nor `best` points at (older saves, crashed writes)."""
    ckpt_dir = Path(ckpt_dir)
    keep = {os.readlink(ckpt_dir / p) for p in ("last", "best") if (ckpt_dir / p).is_symlink()}
    for folder in ckpt_dir.glob("step-*"):
        if folder.name not in keep:
            shutil.rmtree(folder, ignore_errors=True)


def last_checkpoint(ckpt_dir: str | Path) -> tuple[Path, dict]:
    """(weights file, training state) of the last complete checkpoint, checked to be of one step.

    Reads `last/` or, in run directories written before the folder layout, `last.safetensors` with
    `last.state.pt`.
    """
    ckpt_dir = Path(ckpt_dir)
    pointer = ckpt_dir / "last"
    if pointer.is_symlink():
        folder = ckpt_dir / os.readlink(pointer)
        weights, state = folder / WEIGHTS, load_training_state(folder / STATE)
        if folder.name != f"step-{state.get('step', -1):07d}":
            raise ValueError(f"{folder}: holds the training state of step {state.get('step')}; "
                             f"the checkpoint is inconsistent")
        return weights, state
    return ckpt_dir / "last.safetensors", load_training_state(ckpt_dir / "last.state.pt")



def has_checkpoint(ckpt_dir: str | Path) -> bool:
    """Whether a run directory's `checkpoints/` holds a checkpoint to resume from (either layout)."""
    ckpt_dir = Path(ckpt_dir)
    return (ckpt_dir / "last").is_symlink() or (ckpt_dir / "last.state.pt").exists()
