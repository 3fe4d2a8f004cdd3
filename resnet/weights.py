"""Pretrained weights by name (torchvision's IMAGENET1K_V1/V2, timm's a1/a1h, akamaster's CIFAR-10 nets), from a
file, and fitted to a net.

Every name records the file's URL, the SHA-256 prefix its source publishes in the file name, the
top-1 the source publishes (ImageNet-1k val, or CIFAR-10 test), and the preprocessing the weights
expect: (x - mean) / std with ImageNet's mean and std (akamaster used the same), the test resize and
crop, and the options that shape the net: torchvision and timm stride in the bottleneck's 3x3 conv
("v1.5") with option B; akamaster's CIFAR nets use option A with the zero channels split before and
after the identity (`zero_pad="both"`). Files are downloaded with torch.hub's code into
`$TORCH_HOME/hub/checkpoints` (where torchvision keeps them too) and their hash is checked; a file
already there (or any local copy passed as a path) is used without network.
"""

from __future__ import annotations

import difflib
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from resnet.checkpoint import check_finite, load_checkpoint, load_weights, weights_path
from resnet.convert import (CIFAR10_CLASSES, IMAGENET_MEAN, IMAGENET_STD, SOURCE_OPTIONS, from_akamaster,
                            is_akamaster, read_state_dict)
from resnet.models import build_model
from resnet.models.registry import SPECS

TORCHVISION = "https://download.pytorch.org/models/"
TIMM_RSB = "https://github.com/huggingface/pytorch-image-models/releases/download/v0.1-rsb-weights/"
TIMM_RSB_OLD = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-rsb-weights/"
AKAMASTER = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"


@dataclass(frozen=True)
class Weights:
    """One set of published weights and the test preprocessing its top-1 was measured with."""

    model: str  # our network name, e.g. "resnet50"
    tag: str  # "torchvision-v1", "torchvision-v2", "timm-a1", "timm-a1h", "akamaster-cifar10"
    url: str
    top1: float  # top-1 % as published by the source: ImageNet-1k val, or CIFAR-10 test (100 - error)
    image_size: int = 224  # centre crop (CIFAR: the 32x32 image itself)
    resize_size: int = 256  # shorter side before the crop
    interpolation: str = "bilinear"
    dataset: str = "imagenet"  # what the weights were trained on: "imagenet" or "cifar10"

    @property
    def error(self) -> float:
        """Top-1 error %, the paper's measure for CIFAR-10 (Table 6)."""
        return round(100 - self.top1, 3)

    @property
    def options(self) -> dict:
        """The model options the weights need: the stride placement and shortcut, or option A's zero layout."""
        return dict(SOURCE_OPTIONS["akamaster" if self.dataset == "cifar10" else "torchvision"])

    @property
    def name(self) -> str:
        return f"{self.model}.{self.tag}"

    @property
    def source(self) -> str:
        return self.tag.split("-")[0]

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def sha256_prefix(self) -> str:
        """The hash prefix both sources put in their file names (`resnet50-0676ba61.pth`)."""
        return self.file_name.rsplit("-", 1)[-1].split(".")[0]

    def cache_path(self) -> Path:
        return Path(torch.hub.get_dir()) / "checkpoints" / self.file_name


def _torchvision(depth: int, version: int, file: str, top1: float) -> Weights:
    """torchvision's ResNet{depth}_Weights.IMAGENET1K_V{version}: V2 tests at resize 232, V1 at 256."""
    return Weights(f"resnet{depth}", f"torchvision-v{version}", TORCHVISION + file, top1,
                   resize_size=232 if version == 2 else 256)


def _timm(depth: int, tag: str, url: str, top1: float, size: int = 288) -> Weights:
    """timm's resnet{depth}.{tag}_in1k, at the test size timm's validate.py uses (crop_pct 1.0, bicubic)."""
    return Weights(f"resnet{depth}", f"timm-{tag}", url, top1, image_size=size, resize_size=size,
                   interpolation="bicubic")


def _akamaster(depth: int, file: str, error: float) -> Weights:
    """akamaster/pytorch_resnet_cifar10's ResNet-{depth} (BSD-2-Clause), trained on CIFAR-10 at 32x32; `error` is
    the CIFAR-10 test error % its README publishes."""
    return Weights(f"resnet{depth}", "akamaster-cifar10", AKAMASTER + file, round(100 - error, 3), image_size=32,
                   resize_size=32, dataset="cifar10")


# torchvision/models/resnet.py (ResNet*_Weights; acc@1); timm/models/resnet.py (default_cfgs) with top-1
# from timm's results/results-imagenet.csv at each weight's test_input_size; akamaster's README (test error).
WEIGHTS: dict[str, Weights] = {w.name: w for w in (
    _torchvision(18, 1, "resnet18-f37072fd.pth", 69.758),
    _torchvision(34, 1, "resnet34-b627a593.pth", 73.314),
    _torchvision(50, 1, "resnet50-0676ba61.pth", 76.130),
    _torchvision(50, 2, "resnet50-11ad3fa6.pth", 80.858),
    _torchvision(101, 1, "resnet101-63fe2227.pth", 77.374),
    _torchvision(101, 2, "resnet101-cd907fc2.pth", 81.886),
    _torchvision(152, 1, "resnet152-394f9c45.pth", 78.312),
    _torchvision(152, 2, "resnet152-f82ba261.pth", 82.284),
    _timm(18, "a1", TIMM_RSB + "resnet18_a1_0-d63eafa0.pth", 73.164),
    _timm(34, "a1", TIMM_RSB + "resnet34_a1_0-46f8f793.pth", 77.930),
    _timm(50, "a1", TIMM_RSB_OLD + "resnet50_a1_0-14fe96d1.pth", 81.240),
    _timm(50, "a1h", TIMM_RSB + "resnet50_a1h2_176-001a1197.pth", 80.654, size=224),
    _timm(101, "a1", TIMM_RSB + "resnet101_a1_0-cdcb52a9.pth", 82.326),
    _timm(101, "a1h", TIMM_RSB_OLD + "resnet101_a1h-36d3f2aa.pth", 82.796),
    _timm(152, "a1", TIMM_RSB + "resnet152_a1_0-2eee8a7a.pth", 82.742),
    _timm(152, "a1h", TIMM_RSB_OLD + "resnet152_a1h-dc400468.pth", 83.494),
    _akamaster(20, "resnet20-12fca82f.th", 8.27),
    _akamaster(32, "resnet32-d509ac18.th", 7.37),
    _akamaster(44, "resnet44-014dd654.th", 6.90),
    _akamaster(56, "resnet56-4bfd9763.th", 6.61),
    _akamaster(110, "resnet110-1d1ed7c2.th", 6.32),
    _akamaster(1202, "resnet1202-f3b1deed.th", 6.18),
)}


@dataclass
class Pretrained:
    """A state dict with what it needs: the options that shape the net, and the input normalisation."""

    state: dict[str, torch.Tensor]
    source: str  # a name, or the file it came from
    options: dict = field(default_factory=dict)  # bottleneck_stride, shortcut, zero_pad, base_width
    input_mean: torch.Tensor | None = None  # [C,1,1] or [C,H,W], on 0..1
    input_std: torch.Tensor | None = None  # [C,1,1]
    meta: dict = field(default_factory=dict)  # classes and test preprocessing (style, image_size, resize_size)


def list_weights(model: str | None = None) -> list[Weights]:
    """The known names, optionally only those for one network."""
    return [w for w in WEIGHTS.values() if model is None or w.model == model]


def find_weights(model: str, name: str) -> Weights | None:
    """The entry for `name` ("torchvision-v2" with `model`, or "resnet50.torchvision-v2"), None if it is no name."""
    if name in WEIGHTS:
        entry = WEIGHTS[name]
        if entry.model != model:
            raise ValueError(f"weights {name} are for {entry.model}, not {model}")
        return entry
    if f"{model}.{name}" in WEIGHTS:
        return WEIGHTS[f"{model}.{name}"]
    tags = {w.tag for w in WEIGHTS.values()}
    if name in tags or "." in name and name.split(".", 1)[1] in tags:
        known = ", ".join(w.tag for w in list_weights(model)) or "none"
        raise ValueError(f"no weights {name!r} for {model}; known for {model}: {known} (see `resnet weights`)")
    return None


def entry_for_file(path: str | Path) -> Weights | None:
    """The entry whose published file `path` is, by its name: as published (`resnet50-0676ba61.pth`) or with a
    prefix (`akamaster-resnet20-12fca82f.th`, as in ../shared/weights/); None for any other name."""
    name = Path(path).name
    for w in WEIGHTS.values():
        if name == w.file_name or name.endswith(w.file_name) and name[-len(w.file_name) - 1] in "-_.":
            return w
    return None


def download(weights: Weights, progress: bool | None = None) -> Path:
    """The weights file in the torch.hub cache, downloaded (hash checked) if it is not there yet.

    A progress bar shows on stderr when it is a terminal (or when `progress` is True).
    """
    path = weights.cache_path()
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    how = f"download it yourself and pass the file instead (pretrained=FILE, or --init FILE), or place it at {path}"
    try:
        torch.hub.download_url_to_file(weights.url, str(path), hash_prefix=weights.sha256_prefix,
                                       progress=sys.stderr.isatty() if progress is None else progress)
    except RuntimeError as e:
        if "invalid hash" in str(e):
            raise ValueError(f"{weights.url}: SHA-256 does not start with {weights.sha256_prefix} as published; "
                             f"not used. {how}") from None
        raise ConnectionError(f"{weights.url}: download failed ({e}); {how}") from None
    except OSError as e:  # URLError, HTTPError, refused connections, a full disk
        raise ConnectionError(f"{weights.url}: download failed ({getattr(e, 'reason', e)}); {how}") from None
    return path


def _imagenet_classes() -> list[str]:
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def _published(weights: Weights, state: dict[str, torch.Tensor], source: str) -> Pretrained:
    """A torchvision/timm/akamaster state dict in our names, with the preprocessing of its published entry.

    NaN or infinite weights are refused here, before any net is built or trained from them.
    """
    check_finite(state, source)
    if is_akamaster(state):
        state = from_akamaster(state)
    if weights.dataset == "cifar10":
        meta = {"dataset": "cifar10", "style": "small", "image_size": weights.image_size,
                "classes": list(CIFAR10_CLASSES), "weights": weights.name}
    else:
        meta = {"dataset": "imagenet", "style": "imagenet", "image_size": weights.image_size,
                "resize_size": weights.resize_size, "interpolation": weights.interpolation,
                "classes": _imagenet_classes(), "weights": weights.name}
    meta["class_names"] = meta["classes"]
    return Pretrained(state, source, weights.options,
                      torch.tensor(IMAGENET_MEAN).reshape(3, 1, 1), torch.tensor(IMAGENET_STD).reshape(3, 1, 1), meta)


def _own_checkpoint(path: Path) -> Pretrained | None:
    """One of our checkpoints (a run directory or a .safetensors file with our metadata), else None."""
    if not (path.is_dir() or path.suffix == ".safetensors"):
        return None
    file = weights_path(path)
    state, meta, mean = load_weights(file)
    if "model" not in meta:
        return None
    std = meta.pop("input_std", None)
    options = {k: v for k, v in meta.get("options", {}).items()
               if k in ("bottleneck_stride", "shortcut", "zero_pad", "base_width")}
    keep = ("classes", "class_names", "dataset", "style", "image_size", "resize_size", "interpolation")
    return Pretrained(state, str(file), options, mean,
                      None if std is None else torch.tensor(std, dtype=torch.float32).reshape(-1, 1, 1),
                      {k: meta[k] for k in keep if k in meta} | {"weights": str(file)})


def load_pretrained(model: str, name_or_path: str | Path) -> Pretrained:
    """Weights for `model` from a name (downloaded once), our checkpoint or run directory, or a
    torchvision/timm/akamaster file.

    A file named as published (`resnet50-11ad3fa6.pth`, `akamaster-resnet20-12fca82f.th`) gets that entry's
    preprocessing and options; any other gets torchvision's (ImageNet mean and std, resize 256, crop 224),
    or, in akamaster's key names, akamaster's (same mean and std, 32x32, option A with zeros on both sides).
    """
    entry = find_weights(model, str(name_or_path))
    if entry is not None:
        path = download(entry)
        return _published(entry, read_state_dict(path), entry.name)
    path = Path(name_or_path).expanduser()
    if not path.exists():
        names = [w.tag for w in list_weights(model)]
        close = difflib.get_close_matches(str(name_or_path), names, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise FileNotFoundError(f"{name_or_path}: neither a file nor a weights name for {model} "
                                f"(known: {', '.join(names) or 'none'}; see `resnet weights`){hint}")
    own = _own_checkpoint(path)
    if own is not None:
        return own
    state = read_state_dict(path)
    entry = entry_for_file(path)
    if entry is not None and entry.model != model:
        raise ValueError(f"{path}: these are the weights {entry.name}, for {entry.model}, not {model}")
    if entry is None and is_akamaster(state):
        entry = Weights(model, "akamaster-cifar10", path.name, math.nan, image_size=32, resize_size=32,
                        dataset="cifar10")
    found = _published(entry or Weights(model, "torchvision-v1", path.name, math.nan), state, str(path))
    if entry is None or math.isnan(entry.top1):
        found.meta["weights"] = str(path)
    return found


def is_published(name_or_path: str | Path) -> bool:
    """True for what `load_published` reads rather than our checkpoint loader: a weights name (or what looks like
    one: `resnet20.akamaster-cifar1`), or a torch file (.pth/.pt/.th/.bin, torchvision's, timm's or akamaster's)."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if text in WEIGHTS:
        return True
    if path.exists():
        return path.is_file() and path.suffix in (".pth", ".pt", ".th", ".bin")
    return "/" not in text and text.split(".", 1)[0] in SPECS and "." in text


def load_published(name_or_path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The net with published weights, in eval mode, for `resnet eval/predict/export --checkpoint`: a weights name
    (`resnet20.akamaster-cifar10`) or a published file recognised by its name (the net comes from the entry).

    It is `create_model(model, pretrained=...)` plus the metadata our checkpoints carry (model, options,
    input_std), so the commands treat it like one of our checkpoints.
    """
    text = str(name_or_path)
    entry = WEIGHTS.get(text) or (entry_for_file(text) if Path(text).expanduser().is_file() else None)
    if entry is None:
        if not Path(text).expanduser().exists():
            close = difflib.get_close_matches(text, list(WEIGHTS), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise FileNotFoundError(f"{text}: no such checkpoint and no such weights name (see `resnet weights`){hint}")
        raise ValueError(f"{text}: neither our checkpoint nor a published weights file known by its name "
                         f"(`resnet weights --urls`); convert it first: resnet convert {text} "
                         f"--from torchvision|timm|akamaster --model NAME --out FILE.safetensors")
    model = create_model(entry.model, pretrained=name_or_path)
    meta = {"model": entry.model, "options": dict(model.options), **model.meta}
    if model.input_std is not None:
        meta["input_std"] = model.input_std.flatten().tolist()
    model.meta = meta
    return model.to(device).eval()


def load_model(path: str | Path, device: str | torch.device = "cpu", which: str = "best") -> nn.Module:
    """The trained network, in eval mode (`resnet.load_model`): from one of our run directories or .safetensors
    checkpoints (`resnet.checkpoint.load_checkpoint`; `which`: its best or last), or published weights by name or
    file (`resnet20.akamaster-cifar10`, `resnet50-0676ba61.pth`: `load_published`).

    The model carries `.meta` (classes, dataset, image size, ...), `.input_mean` and `.input_std`.
    """
    if is_published(path):
        return load_published(path, device)
    return load_checkpoint(path, device, which)


# ----------------------------------------------------------------------------- loading weights into a net

def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """conv1's weight for another number of input channels, as timm does: summed for 1 channel, else repeated
    and scaled so that an image copied into every channel gives the same response."""
    source = weight.shape[1]
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = math.ceil(in_channels / source)
    return weight.repeat(1, repeats, 1, 1)[:, :in_channels] * (source / in_channels)


def adapt_channels(stat: torch.Tensor | None, in_channels: int) -> torch.Tensor | None:
    """A mean or std for another number of channels: averaged down to 1, else repeated."""
    if stat is None or stat.shape[0] == in_channels:
        return stat
    if in_channels == 1:
        return stat.mean(dim=0, keepdim=True)
    return stat.repeat(math.ceil(in_channels / stat.shape[0]), 1, 1)[:in_channels]


def load_into(net: nn.Module, pretrained: Pretrained) -> list[str]:
    """Load every tensor of `pretrained` into `net`; returns notes on what was adapted.

    conv1 is adapted to the net's input channels; a classifier of another size is left freshly
    initialised; any other difference is a ValueError listing the keys. The net's `input_mean` and
    `input_std` become the weights' (channels adapted).
    """
    state, own, notes = dict(pretrained.state), net.state_dict(), []
    conv1 = state.get("conv1.weight")
    if conv1 is not None and conv1.dim() == 4 and conv1.shape[1] != net.conv1.in_channels:
        channels = net.conv1.in_channels
        state["conv1.weight"] = adapt_first_conv(conv1, channels)
        how = "summed over" if channels == 1 else "repeated across"
        notes.append(f"conv1: {conv1.shape[1]} -> {channels} input channel(s), pretrained filters {how} channels "
                     f"(as timm does); input mean/std adapted the same way")
    fc = state.get("fc.weight")
    if fc is not None and fc.shape != own["fc.weight"].shape and fc.shape[1:] == own["fc.weight"].shape[1:]:
        del state["fc.weight"]
        state.pop("fc.bias", None)
        notes.append(f"fc: {fc.shape[0]} -> {own['fc.weight'].shape[0]} classes, re-initialised")
    _check_keys(own, state, pretrained.source, getattr(net, "name", type(net).__name__))
    net.load_state_dict(state, strict=False)
    channels = net.conv1.in_channels
    net.input_mean = adapt_channels(pretrained.input_mean, channels)
    net.input_std = adapt_channels(pretrained.input_std, channels)
    return notes


def _check_keys(own: dict, state: dict, source: str, target: str) -> None:
    """Every key of the net present in `state` with its shape (the classifier excepted), and nothing extra."""
    missing = sorted(k for k in set(own) - set(state) if not k.startswith("fc."))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                    for k in own.keys() & state.keys() if state[k].shape != own[k].shape)
    problems = [f"{label}: {', '.join(items[:6])}{' ...' if len(items) > 6 else ''} ({len(items)})"
                for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes))
                if items]
    if problems:
        raise ValueError(f"weights {source} do not fit {target}: {'; '.join(problems)}")


def create_model(name: str, *, pretrained: str | Path | None = None, **options) -> nn.Module:
    """A network of the paper by name (`resnet.create_model`): `resnet.models.build_model(name, **options)`,
    optionally with pretrained weights: a name (`resnet weights`) or a file.

    The weights decide the stride placement and shortcut (torchvision/timm: stride in the 3x3 conv,
    option B); `num_classes` other than theirs gets a fresh classifier. The model carries the weights'
    input normalisation (`.input_mean`, `.input_std`) and test preprocessing (`.meta`).
    """
    if pretrained is None:
        return build_model(name, **options)
    weights = load_pretrained(name, pretrained)
    conflicts = [f"{k}={options[k]!r}" for k, v in weights.options.items()
                 if options.get(k) is not None and options[k] != v]
    if conflicts:
        raise ValueError(f"pretrained={pretrained}: the weights need {weights.options}, not {', '.join(conflicts)}")
    model = build_model(name, **{**options, **weights.options})
    notes = load_into(model, weights)
    for note in notes:
        print(note, file=sys.stderr)
    meta = dict(weights.meta)
    if any(note.startswith("fc:") for note in notes):  # a new classifier: the source's classes no longer apply
        meta = {k: v for k, v in meta.items() if k not in ("classes", "class_names", "dataset")}
    model.meta = meta
    return model


def weights_table() -> list[dict]:
    """Every known name with its source, dataset, published top-1 and error, test preprocessing, the options
    that shape the net, the URL and SHA-256 prefix, and local-cache state."""
    return [{"name": w.name, "model": w.model, "source": w.source, "dataset": w.dataset, "top1": w.top1,
             "error": w.error, "resize": w.resize_size, "crop": w.image_size, "interpolation": w.interpolation,
             "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "options": w.options,
             "sha256": w.sha256_prefix, "cached": w.cache_path().is_file(), "path": str(w.cache_path()), "url": w.url}
            for w in WEIGHTS.values()]


__all__ = ["WEIGHTS", "Pretrained", "Weights", "create_model", "download", "entry_for_file", "is_published",
           "list_weights", "load_into", "load_model", "load_pretrained", "load_published", "weights_table"]
