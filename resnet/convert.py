"""Weights from torchvision, timm or akamaster's CIFAR-10 nets as a checkpoint of this project (safetensors
with metadata).

Both libraries use the state-dict names of this project's ImageNet nets (conv1, bn1, layer1..layer4,
downsample.0/.1, fc) and put the bottleneck's stride in its 3x3 conv ("v1.5"), so the network is
built with `bottleneck_stride="3x3"` and projection shortcuts (option B), and the keys load as they
are. Their weights were trained on (x - mean) / std with ImageNet's per-channel mean and std;
the checkpoint stores them as `input_mean` and `input_std` [3,1,1], and `resnet eval`/`predict`/
`analyze` normalise with both, so the converted model sees exactly the input the source model saw
and gives the same logits. (`resnet.weights` names the published files and downloads them.)

akamaster/pytorch_resnet_cifar10 saves its CIFAR nets (section 4.2, option A) under `nn.DataParallel`
(`module.` prefix), calls the classifier `linear`, and has no `num_batches_tracked` buffers; its option
A splits the zero channels evenly before and after the identity, so the net is built with
`zero_pad="both"`. Its inputs were normalised with the same ImageNet mean and std, at 32x32.
"""

from __future__ import annotations

from pathlib import Path

import torch

from resnet.checkpoint import check_finite, load_state_dict_checked, save_weights
from resnet.models import build_model, get_spec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SOURCES = ("torchvision", "timm", "akamaster")
# the options each source's nets were trained with: torchvision/timm stride in the 3x3 conv ("v1.5") with
# projection shortcuts; akamaster's option A puts half the zero channels before the identity, half after
SOURCE_OPTIONS = {"torchvision": {"shortcut": "B", "bottleneck_stride": "3x3"},
                  "timm": {"shortcut": "B", "bottleneck_stride": "3x3"},
                  "akamaster": {"shortcut": "A", "zero_pad": "both"}}
SOURCE_FAMILY = {"torchvision": "imagenet", "timm": "imagenet", "akamaster": "cifar"}
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
    """Rename `source`'s keys to ours: torchvision and timm already use our names; akamaster's need mapping."""
    if source not in SOURCES:
        raise ValueError(f"unknown --from {source!r}; choose one of {', '.join(SOURCES)}")
    return from_akamaster(state) if source == "akamaster" else dict(state)


def is_akamaster(state: dict[str, torch.Tensor]) -> bool:
    """True for a state dict in akamaster's names (a `linear` classifier where ours is `fc`)."""
    return "linear.weight" in state and "fc.weight" not in state


def from_akamaster(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """akamaster's names to ours (`module.` is already stripped by read_state_dict): `linear.*` -> `fc.*`,
    and each BN gets the `num_batches_tracked` buffer it lacks (0: BN with a fixed momentum never reads it)."""
    out = {("fc." + k.removeprefix("linear.")) if k.startswith("linear.") else k: v for k, v in state.items()}
    for key in [k for k in out if k.endswith(".running_mean")]:
        out.setdefault(key.removesuffix("running_mean") + "num_batches_tracked", torch.tensor(0, dtype=torch.long))
    return out


def read_classes(path: str | Path | None, num_classes: int) -> list[str]:
    """Class names from a text file (one a line), or "0".."K-1" without one."""
    if path is None:
        return [str(i) for i in range(num_classes)]
    names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if len(names) != num_classes:
        raise ValueError(f"{path}: {len(names)} class names for a classifier of {num_classes} classes")
    return names


def describe_options(options: dict) -> str:
    """The options that make a source's weights fit, as words: "bottleneck stride 3x3, shortcut B"."""
    words = {"bottleneck_stride": "bottleneck stride", "shortcut": "shortcut", "zero_pad": "zero channels"}
    return ", ".join(f"{words.get(k, k)} {v}" for k, v in options.items())


def convert(source: str, src: str | Path, model_name: str, out: str | Path, classes: str | Path | None = None,
            image_size: int | None = None) -> dict:
    """Convert `src` (a torchvision, timm or akamaster state dict) into a checkpoint for `model_name` at `out`.

    Weights holding NaN or infinity are refused before anything is written. `image_size` defaults to
    the source's training size (224 ImageNet, 32 CIFAR).
    """
    spec = get_spec(model_name)
    if source in SOURCE_FAMILY and spec.family != SOURCE_FAMILY[source]:
        which = "ImageNet nets of Table 1" if SOURCE_FAMILY[source] == "imagenet" else "CIFAR nets of section 4.2"
        raise ValueError(f"--model {model_name}: only the {which} match {source} weights")
    state = map_keys(read_state_dict(src), source)
    check_finite(state, str(src))
    cifar = source == "akamaster"
    fc, conv1 = state.get("fc.weight"), state.get("conv1.weight")
    num_classes = int(fc.shape[0]) if fc is not None and fc.dim() == 2 else (10 if cifar else 1000)
    in_channels = int(conv1.shape[1]) if conv1 is not None and conv1.dim() == 4 else 3
    options = SOURCE_OPTIONS[source]
    model = build_model(model_name, num_classes=num_classes, in_channels=in_channels, **options)
    load_state_dict_checked(model, state, str(src), f"{model_name} ({describe_options(options)})")
    if classes is None and cifar and num_classes == len(CIFAR10_CLASSES):
        names = list(CIFAR10_CLASSES)
    else:
        names = read_classes(classes, num_classes)
    meta = {"model": model_name, "options": model.options, "classes": names, "class_names": names,
            "dataset": "cifar10" if cifar else "imagenet", "image_size": image_size or (32 if cifar else 224),
            "style": "small" if cifar else "imagenet", "source": {"from": source, "file": str(src)}}
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).reshape(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).reshape(3, 1, 1)
    if in_channels != 3:
        mean, std = torch.zeros(in_channels, 1, 1), None
    path = save_weights(out, model, meta, mean, std)
    return {"out": str(path), "model": model_name, "num_classes": num_classes, "tensors": len(state),
            "described": describe_options(options), **meta,
            "input_std": None if std is None else std.flatten().tolist()}
