"""Weights from torchvision or timm as a checkpoint of this project (safetensors with metadata).

Both libraries use the state-dict names of this project's ImageNet nets (conv1, bn1, layer1..layer4,
downsample.0/.1, fc) and put the bottleneck's stride in its 3x3 conv ("v1.5"), so the network is
built with `bottleneck_stride="3x3"` and projection shortcuts (option B), and the keys load as they
are. Their weights were trained on (x - mean) / std with ImageNet's per-channel mean and std;
the checkpoint stores them as `input_mean` and `input_std` [3,1,1], and `resnet eval`/`predict`/
`analyze` normalise with both, so the converted model sees exactly the input the source model saw
and gives the same logits. (`resnet.weights` names the published files and downloads them.)
"""

from __future__ import annotations

from pathlib import Path

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SOURCES = ("torchvision", "timm")
_WRAPPERS = ("state_dict", "model", "state_dict_ema", "model_ema")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch file, never running pickled code (weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch/safetensors raise many types for a bad file
        raise ValueError(f"{path}: not a readable state dict ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    for key in _WRAPPERS:  # training checkpoints wrap the weights: {"state_dict": {...}, ...}
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a dict of tensors (a state dict)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def map_keys(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Rename `source`'s keys to ours: both libraries already use torchvision's names for plain ResNets."""
    if source not in SOURCES:
        raise ValueError(f"unknown --from {source!r}; choose one of {', '.join(SOURCES)}")
    return dict(state)


def read_classes(path: str | Path | None, num_classes: int) -> list[str]:
    """Class names from a text file (one a line), or "0".."K-1" without one."""
    if path is None:
        return [str(i) for i in range(num_classes)]
    names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if len(names) != num_classes:
        raise ValueError(f"{path}: {len(names)} class names for a classifier of {num_classes} classes")
    return names


def convert(source: str, src: str | Path, model_name: str, out: str | Path, classes: str | Path | None = None,
            image_size: int = 224) -> dict:
    """Convert `src` (a torchvision or timm state dict) into a checkpoint for `model_name` at `out`."""
    from resnet.models import create_model, get_spec
    from resnet.checkpoint import load_state_dict_checked, save_weights

    spec = get_spec(model_name)
    if spec.family != "imagenet":
        raise ValueError(f"--model {model_name}: only the ImageNet nets of Table 1 match torchvision/timm weights")
    state = map_keys(read_state_dict(src), source)
    fc, conv1 = state.get("fc.weight"), state.get("conv1.weight")
    num_classes = int(fc.shape[0]) if fc is not None and fc.dim() == 2 else 1000
    in_channels = int(conv1.shape[1]) if conv1 is not None and conv1.dim() == 4 else 3
    model = create_model(model_name, num_classes=num_classes, in_channels=in_channels, shortcut="B",
                         bottleneck_stride="3x3")
    load_state_dict_checked(model, state, str(src), f"{model_name} (bottleneck stride 3x3, shortcut B)")
    names = read_classes(classes, num_classes)
    meta = {"model": model_name, "options": model.options, "classes": names, "class_names": names,
            "dataset": "imagenet", "image_size": image_size, "style": "imagenet",
            "source": {"from": source, "file": str(src)}}
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).reshape(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).reshape(3, 1, 1)
    if in_channels != 3:
        mean, std = torch.zeros(in_channels, 1, 1), None
    path = save_weights(out, model, meta, mean, std)
    return {"out": str(path), "model": model_name, "num_classes": num_classes, "tensors": len(state), **meta,
            "input_std": None if std is None else std.flatten().tolist()}
