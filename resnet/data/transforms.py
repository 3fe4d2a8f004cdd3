"""The paper's train and test transforms (section 3.4 for ImageNet, section 4.2 for CIFAR), on transforms.v2.

Every transform accepts a PIL image or a uint8 CHW tensor and returns a float32 CHW tensor.
The ImageNet-style transforms carry `min_side`, the smallest shorter side they resize to, so a
dataset can decode JPEGs at reduced size (PIL draft mode) without losing resolution the
transform needs.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from resnet.data.info import DatasetInfo

# AlexNet's PCA colour augmentation: eigen-decomposition of ImageNet's RGB covariance (0..1 scale).
IMAGENET_EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
IMAGENET_EIGVEC = torch.tensor(
    [
        [-0.5675, 0.7192, 0.4009],
        [-0.5808, -0.0045, -0.8140],
        [-0.5836, -0.6948, 0.4203],
    ]
)

CIFAR_PAD = 4  # "4 pixels are padded on each side" (section 4.2)
SCALE_RANGE = (256, 480)  # "shorter side randomly sampled in [256, 480]" (section 3.4)
PAPER_CROP = 224


def _as_image(outpt: torch.Tensor, inpt: Any) -> torch.Tensor:
    """Keep the tv_tensors type of the input so later v2 transforms treat the output as an image."""
    return tv_tensors.wrap(outpt, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else outpt


class MeanSubtract(v2.Transform):
    """Subtract the training set's mean ([C,H,W] per-pixel or [C,1,1] per-channel) from a 0..1 float image."""

    _transformed_types = (torch.Tensor,)

    def __init__(self, mean: torch.Tensor) -> None:
        super().__init__()
        mean = torch.as_tensor(mean, dtype=torch.float32)
        if mean.ndim == 1:
            mean = mean[:, None, None]
        if mean.ndim != 3:
            raise ValueError(f"mean must be [C,H,W] or [C,1,1], got shape {tuple(mean.shape)}")
        self.mean = mean
        self.channel_mean = mean.mean(dim=(1, 2), keepdim=True)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not inpt.is_floating_point():
            raise TypeError("MeanSubtract expects a float image in 0..1; put v2.ToDtype(torch.float32, scale=True) first")
        mean = self.mean
        if mean.shape[-2:] != (1, 1) and mean.shape[-2:] != inpt.shape[-2:]:
            mean = self.channel_mean  # a per-pixel mean only fits images of its own size
        return _as_image(inpt - mean.to(inpt.device, inpt.dtype), inpt)


class Lighting(v2.Transform):
    """AlexNet's PCA lighting noise: add eigvec @ (alpha * eigval), alpha ~ N(0, alphastd), to every pixel."""

    _transformed_types = (torch.Tensor,)

    def __init__(self, alphastd: float = 0.1, eigval: torch.Tensor = IMAGENET_EIGVAL, eigvec: torch.Tensor = IMAGENET_EIGVEC):
        super().__init__()
        self.alphastd = alphastd
        self.eigval = eigval
        self.eigvec = eigvec

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        alpha = torch.randn(3) * self.alphastd
        return {"rgb": self.eigvec @ (alpha * self.eigval)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if self.alphastd == 0:
            return inpt
        if not inpt.is_floating_point():
            raise TypeError("Lighting expects a float image in 0..1")
        rgb = params["rgb"].to(inpt.device, inpt.dtype)[:, None, None]
        return _as_image(inpt + rgb, inpt)


def resize_shorter(size: int) -> v2.Transform:
    """Resize so that the shorter side is `size`, keeping the aspect ratio."""
    return v2.Resize(size, antialias=True)


def default_resize(crop: int) -> int:
    """The test resize for an ImageNet-style crop: the paper's 256 for 224, in proportion otherwise."""
    return round(256 * crop / PAPER_CROP)


def resize_center_crop(size: int) -> v2.Compose:
    """A small-style image at its network size: shorter side resized to `size`, centre crop (identity at size x size)."""
    return v2.Compose([resize_shorter(size), v2.CenterCrop(size)])


def _with_min_side(transform: v2.Compose, min_side: int | None) -> v2.Compose:
    transform.min_side = min_side
    return transform


def _scale_range(image_size: int) -> tuple[int, int]:
    """The paper's [256, 480] for 224 crops, scaled in proportion for other crop sizes."""
    lo, hi = SCALE_RANGE
    return round(lo * image_size / PAPER_CROP), round(hi * image_size / PAPER_CROP)


def train_transform(info: DatasetInfo, mean: torch.Tensor, crop_pad: int = CIFAR_PAD) -> Callable:
    """The paper's training augmentation for `info.style`: CIFAR pad-crop-flip (`crop_pad` zeros on each side) or
    ImageNet scale-crop-flip-lighting."""
    if info.style == "small":
        return _with_min_side(
            v2.Compose(
                [
                    v2.ToImage(),
                    resize_center_crop(info.image_size),
                    v2.RandomCrop(info.image_size, padding=crop_pad),
                    v2.RandomHorizontalFlip(),
                    v2.ToDtype(torch.float32, scale=True),
                    MeanSubtract(mean),
                    v2.ToPureTensor(),
                ]
            ),
            info.image_size,
        )
    lo, hi = _scale_range(info.image_size)
    return _with_min_side(
        v2.Compose(
            [
                v2.ToImage(),
                v2.RandomShortestSize(list(range(lo, hi + 1)), antialias=True),
                v2.RandomCrop(info.image_size),
                v2.RandomHorizontalFlip(),
                v2.ToDtype(torch.float32, scale=True),
                Lighting(0.1),
                MeanSubtract(mean),
                v2.ToPureTensor(),
            ]
        ),
        lo,
    )


def test_transform(info: DatasetInfo, mean: torch.Tensor, resize: int | None = None, crop: int | None = None) -> Callable:
    """The paper's single-view test input: the image itself (small; fitted to the network's size) or shorter
    side 256, centre 224 crop (ImageNet)."""
    if info.style == "small":
        return _with_min_side(
            v2.Compose([v2.ToImage(), resize_center_crop(info.image_size), v2.ToDtype(torch.float32, scale=True), MeanSubtract(mean),
                        v2.ToPureTensor()]),
            info.image_size,
        )
    crop = crop or info.image_size
    resize = resize or default_resize(crop)
    return _with_min_side(
        v2.Compose(
            [
                v2.ToImage(),
                resize_shorter(resize),
                v2.CenterCrop(crop),
                v2.ToDtype(torch.float32, scale=True),
                MeanSubtract(mean),
                v2.ToPureTensor(),
            ]
        ),
        resize,
    )


test_transform.__test__ = False  # a transform, not a pytest test, when a test module imports it by name
