"""The paper's test protocols (section 3.4), as views of one image and the scores averaged over them.

- `center`: shorter side resized to 256, the central 224x224 crop (CIFAR-size data: the image itself,
  fitted to the network's size first when it has another size: shorter side resized, centre crop).
- `flip`, `flip-shift`: the centre view and its mirror; and copies moved one pixel down-right and up-left,
  each with its mirror (`--tta`, as the `fast` recipe evaluates during training).
- `10crop`: the four corner crops and the centre crop of the 256-resized image, and their flips
  (torchvision's TenCrop). For CIFAR-size data the crops are taken from the image padded with 4 zero
  pixels on each side, the same padding the training augmentation crops from (section 4.2).
- `multiscale`: the fully-convolutional test: the whole image with its shorter side resized to each
  scale ({224, 256, 384, 480, 640}) and its flip goes through the stem and stages, the classifier is
  applied to the average-pooled features, and the softmax scores are averaged over scales and flips.
  CIFAR-size nets were trained without scale augmentation, so their default scale set is just the
  image's own size (the image and its flip); pass other scales to try them.

The geometry runs in the data-loading workers on the 0..1 image; each model's normalisation
(`InputNorm`) is applied afterwards, so members of an ensemble may use different means.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from resnet import precision
from resnet.data.loaders import tta_views
from resnet.data.transforms import default_resize, resize_center_crop
from resnet.evaluate import memory
from resnet.evaluate.preprocess import InputNorm

PAPER_SCALES = (224, 256, 384, 480, 640)
SMALL_PAD = 4  # pixels of zero padding around a CIFAR image (section 4.2)


def to_image(image) -> torch.Tensor:
    """A PIL image or an image tensor as a plain CHW tensor (uint8 stays uint8)."""
    if not isinstance(image, torch.Tensor):
        image = TF.to_image(image)
    return image.as_subclass(torch.Tensor)


def to_float(image: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float32 0..1 (float input is assumed to be 0..1 already)."""
    return TF.to_dtype(image, torch.float32, scale=True)


def fully_convolutional(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits of an image of any size: stem, stages, then `classify` (average pool + fc)."""
    if not hasattr(model, "classify"):
        return model(x)
    x = model.stem(x)
    for stage in model.stages:
        x = stage(x)
    return model.classify(x)


def softmax_scores(model: nn.Module, x: torch.Tensor, amp: bool | None = None) -> torch.Tensor:
    """Class probabilities [N, K] for a normalised batch (softmax in float32), on the device's fast path when
    `amp` is None; `amp=False` is exact fp32 in NCHW (`--no-amp`), whatever the CPU.

    The batch goes through the network in chunks small enough for the memory there is (resnet/evaluate/memory.py),
    so an oversized --batch-size gives the same scores instead of running out of memory."""
    fast = precision.channels_last(x.device, False if amp is False else None)
    dtype = precision.amp_dtype(x.device, amp)
    outputs = []
    for part in memory.chunks_for(x, x.device):
        if fast:
            part = part.contiguous(memory_format=torch.channels_last)
        with precision.autocast(x.device, dtype):
            logits = fully_convolutional(model, part)
        outputs.append(F.softmax(logits.float(), dim=1))
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


def default_crop(style: str) -> int:
    """The network input side when a checkpoint does not say: CIFAR's 32 (small style) or the paper's 224."""
    return 32 if style == "small" else 224


class Protocol:
    """Views of one image (`prepare`, run by the data loader) and their averaged scores (`scores`)."""

    name = ""
    min_side: int | None = None  # the smallest shorter side the views need (JPEGs may be decoded down to it)

    def prepare(self, image) -> torch.Tensor | list[torch.Tensor]:
        raise NotImplementedError

    def collate(self, batch: list) -> tuple:
        """Default collation: views stacked into [B, V, C, H, W], labels into [B]."""
        return torch.utils.data.default_collate(batch)

    def scores(self, model: nn.Module, norm: InputNorm, views, device: torch.device | str = "cpu",
               amp: bool | None = None) -> torch.Tensor:
        """Probabilities [B, K] averaged over each image's views [B, V, C, H, W] (`amp`: see softmax_scores).

        One view at a time through the net: on a CPU one batch of V x B images runs slower per image than V of B."""
        views = views.to(device, non_blocking=True)
        return torch.stack([softmax_scores(model, norm(views[:, i]), amp) for i in range(views.shape[1])]).mean(dim=0)


class Center(Protocol):
    """One view: the 224 centre crop of the 256-resized image, or the small image itself."""

    name = "center"

    def __init__(self, style: str = "imagenet", crop: int | None = None, resize: int | None = None) -> None:
        self.style = style
        crop = crop or default_crop(style)
        if style == "small":
            self.geometry: nn.Module = resize_center_crop(crop)
            self.min_side = crop
        else:
            self.min_side = resize or default_resize(crop)
            self.geometry = v2.Compose([v2.Resize(self.min_side, antialias=True), v2.CenterCrop(crop)])

    def prepare(self, image) -> torch.Tensor:
        return to_float(self.geometry(to_image(image)))[None]


class CenterViews(Center):
    """The centre view under the test-time views `tta` (resnet.data.loaders.TTA_VIEWS, `resnet eval --tta`):
    "flip" (the view and its mirror, as the `fast` recipe's evaluations during training) or "flip-shift"."""

    def __init__(self, tta: str, style: str = "imagenet", crop: int | None = None, resize: int | None = None) -> None:
        super().__init__(style, crop, resize)
        self.name = tta

    def prepare(self, image) -> torch.Tensor:
        return tta_views(super().prepare(image), self.name)


class TenCrop(Protocol):
    """Ten views: four corners and centre of the resized (or, small data, padded) image, and their flips."""

    name = "10crop"

    def __init__(self, style: str = "imagenet", crop: int | None = None, resize: int | None = None,
                 pad: int = SMALL_PAD) -> None:
        crop = crop or default_crop(style)
        self.style, self.crop, self.pad = style, crop, pad
        self.min_side = crop if style == "small" else resize or default_resize(crop)
        self.resize = resize_center_crop(crop) if style == "small" else v2.Resize(self.min_side, antialias=True)

    def prepare(self, image) -> torch.Tensor:
        image = self.resize(to_image(image))
        if self.style == "small":
            size = tuple(image.shape[-2:])
            image = TF.pad(image, [self.pad])
        else:
            size = (self.crop, self.crop)
        return to_float(torch.stack(list(TF.ten_crop(image, list(size)))))


class MultiScale(Protocol):
    """The fully-convolutional test: the whole image at several shorter sides, and its flip."""

    name = "multiscale"

    def __init__(self, scales: Sequence[int] = PAPER_SCALES, flip: bool = True) -> None:
        if not scales or any(int(s) < 1 for s in scales):
            raise ValueError(f"invalid --scales {list(scales)}: need positive sizes")
        self.scales = tuple(int(s) for s in scales)
        self.flip = flip
        self.min_side = max(self.scales)
        self.resizes = [v2.Resize(s, antialias=True) for s in self.scales]

    def prepare(self, image) -> list[torch.Tensor]:
        image = to_image(image)
        return [to_float(resize(image)) for resize in self.resizes]

    def collate(self, batch: list) -> tuple:
        """Views stay a list per image (their sizes differ); labels are stacked."""
        views = [item[0] for item in batch]
        labels = torch.as_tensor([int(item[1]) for item in batch])
        return views, labels

    def scores(self, model: nn.Module, norm: InputNorm, views, device: torch.device | str = "cpu",
               amp: bool | None = None) -> torch.Tensor:
        """Mean probabilities over scales and flips; views of equal size go through the net as one batch."""
        groups: dict[tuple[int, ...], list[tuple[int, torch.Tensor]]] = defaultdict(list)
        for i, per_scale in enumerate(views):
            for view in per_scale:
                groups[tuple(view.shape)].append((i, view))
        total: torch.Tensor | None = None
        counts = torch.zeros(len(views), device=device)
        for members in groups.values():
            index = torch.as_tensor([i for i, _ in members], device=device)
            x = norm(torch.stack([v for _, v in members]).to(device, non_blocking=True))
            if self.flip:
                x, index = torch.cat([x, x.flip(-1)]), torch.cat([index, index])
            probs = softmax_scores(model, x, amp)
            if total is None:
                total = torch.zeros(len(views), probs.shape[1], device=device)
            total.index_add_(0, index, probs)
            counts.index_add_(0, index, torch.ones_like(index, dtype=counts.dtype))
        assert total is not None, "no views to score"
        return total / counts[:, None]


PROTOCOLS = ("center", "flip", "flip-shift", "10crop", "multiscale")


def get_protocol(name: str, style: str = "imagenet", image_size: int | None = None,
                 scales: Sequence[int] | None = None, resize: int | None = None) -> Protocol:
    """A protocol by name for data of `style` ("small" CIFAR-size or "imagenet"), crop size `image_size`
    and test resize `resize` (ImageNet style; default 256 for 224 crops, in proportion otherwise)."""
    crop = image_size or default_crop(style)
    if name == "center":
        return Center(style, crop, resize)
    if name in ("flip", "flip-shift"):
        return CenterViews(name, style, crop, resize)
    if name == "10crop":
        return TenCrop(style, crop, resize)
    if name == "multiscale":
        if scales is None:
            scales = (crop,) if style == "small" else PAPER_SCALES
        return MultiScale(scales)
    raise ValueError(f"unknown protocol {name!r}; choose one of {', '.join(PROTOCOLS)}")


def checkpoint_protocol(model: nn.Module, name: str = "center", scales: Sequence[int] | None = None,
                        data_style: str | None = None) -> Protocol:
    """The protocol `name` with a checkpoint's own test preprocessing: its metadata's style, image size, resize."""
    meta = getattr(model, "meta", None) or {}
    style = meta.get("style") or data_style
    if style is None:
        style = "small" if getattr(getattr(model, "spec", None), "family", "") == "cifar" else "imagenet"
    image_size = meta.get("image_size")
    if isinstance(image_size, (list, tuple)):
        image_size = image_size[-1]
    return get_protocol(name, style, int(image_size) if image_size else None, scales, meta.get("resize_size"))
