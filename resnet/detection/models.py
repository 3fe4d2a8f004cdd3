"""Faster R-CNN and Mask R-CNN on our networks: `create_detector`, its checkpoints, and the training loss.

Everything but the backbone is torchvision's (`torchvision.models.detection`): the image transform
(GeneralizedRCNNTransform: resize, normalise, batch), the RPN (AnchorGenerator, RPNHead, proposal
sampling, NMS), the RoI heads (MultiScaleRoIAlign, box coding, losses, per-class NMS) and, with
masks, Mask R-CNN's mask branch. Targets and outputs are torchvision's: a list of image tensors
[C,H,W] on 0..1 and, for training, a list of {"boxes": [N,4] x1y1x2y2 float, "labels": [N] int64
(1..K; 0 is the background), "masks": [N,H,W] uint8}.

Heads (see backbones.py): "c4" is the paper's (Appendix A), "fpn" torchvision's resnet50_fpn design.
Mask head for "c4": the box head's conv5_x (shared weights) on the positive RoIs, then torchvision's
MaskRCNNPredictor (2x2 deconvolution to 14x14 masks), as Mask R-CNN's C4 variant.

Defaults: torchvision's (min_size 800, max_size 1333, box_score_thresh 0.05, ...); any of FasterRCNN's
or MaskRCNN's keyword options passes through `**model_options`. Anchors: fpn, one size per level, 8x
the level's stride (32..512 on an ImageNet net, torchvision's); c4, one level with sizes 2x..32x the
trunk's stride (32..512 at stride 16, detectron2's C4 default); aspect ratios 0.5, 1, 2. The input
normalisation (`image_mean`, `image_std`) is the backbone weights' when they have one, else ImageNet's,
averaged to one value for a 1-channel net (in_channels=1, e.g. the grayscale fashion-scenes).

Checkpoints (hooks for the training engine): `detector_meta(model)` is the metadata to save with
`resnet.checkpoint.save_weights(path, model, detector_meta(model))` (or `save_training_checkpoint`), and
`load_detector(path)` rebuilds the detector from it: the backbone's name and options, the head, masks,
classes and every model option are in `meta["detector"]`. `detection_loss(model, images, targets)`
gives the scalar to back-propagate (the sum of torchvision's loss dict) and the dict.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign

from resnet.checkpoint import (META_KEY, check_finite, load_state_dict_checked, load_weights, save_weights, unwrap,
                               weights_path)
from resnet.convert import IMAGENET_MEAN, IMAGENET_STD
from resnet.detection.backbones import (
    FPN_CHANNELS,
    C4BoxHead,
    C4MaskHead,
    C4Trunk,
    FPNBackbone,
    check_trainable_stages,
    freeze_backbone,
)
from resnet.models import build_model
from resnet.train.finetune import read_init
from resnet.weights import adapt_channels, load_into

HEADS = ("c4", "fpn")
ASPECT_RATIOS = (0.5, 1.0, 2.0)
DETECTOR_OPTIONS = ("anchor_sizes", "aspect_ratios", "fpn_channels")  # ours; the rest go to torchvision
# torchvision's arguments that create_detector builds itself
_BUILT = {"self", "backbone", "num_classes", "rpn_anchor_generator", "rpn_head", "box_roi_pool", "box_head",
          "box_predictor", "mask_roi_pool", "mask_head", "mask_predictor", "kwargs"}


def _net_options() -> set[str]:
    return set(inspect.signature(build_model).parameters) - {"name", "num_classes"}


def _rcnn_options() -> set[str]:
    names = set(inspect.signature(MaskRCNN.__init__).parameters) | set(inspect.signature(FasterRCNN.__init__).parameters)
    names |= set(inspect.signature(GeneralizedRCNNTransform.__init__).parameters)
    return names - _BUILT


def split_options(options: dict) -> tuple[dict, dict, dict]:
    """(network options, our detector options, torchvision's FasterRCNN/MaskRCNN options); unknown names: ValueError."""
    net_names, rcnn_names = _net_options(), _rcnn_options()
    unknown = sorted(set(options) - net_names - rcnn_names - set(DETECTOR_OPTIONS))
    if unknown:
        raise ValueError(f"unknown detector option(s) {', '.join(unknown)}; the network takes {', '.join(sorted(net_names))}; "
                         f"ours: {', '.join(DETECTOR_OPTIONS)}; the rest are FasterRCNN/MaskRCNN keyword arguments")
    pick = lambda names: {k: v for k, v in options.items() if k in names}  # noqa: E731
    return pick(net_names), pick(DETECTOR_OPTIONS), pick(rcnn_names)


def _per_channel(stat: torch.Tensor | None, channels: int, default: tuple[float, ...]) -> list[float]:
    """A mean or std as one value per input channel (a per-pixel mean is averaged over the image)."""
    if stat is None:
        stat = torch.tensor(default).reshape(-1, 1, 1)
    stat = adapt_channels(stat.float().mean(dim=(1, 2), keepdim=True), channels)
    return [round(float(v), 6) for v in stat.flatten()]


def _backbone_net(backbone: str, net_options: dict, backbone_weights: str | Path | None) -> tuple[nn.Module, str | None]:
    """Our classification net (weights loaded, conv1 fitted to in_channels) and the weights' source."""
    if backbone_weights is None:
        return build_model(backbone, **net_options), None

    pretrained, merged, notes = read_init(backbone, backbone_weights, net_options)
    check_finite(pretrained.state, f"--backbone-weights {pretrained.source}")  # as --init: NaN would diverge
    net = build_model(backbone, **merged)
    notes += [n for n in load_into(net, pretrained) if not n.startswith("fc:")]  # the classifier is not used
    for note in notes:
        print(f"backbone weights: {note}", file=sys.stderr)
    return net, pretrained.source


def create_detector(backbone: str, head: str = "c4", masks: bool = False, num_classes: int | None = None, *,
                    class_names: list[str] | None = None, category_ids: list[int] | None = None,
                    backbone_weights: str | Path | None = None, trainable_stages: int | None = None,
                    frozen_bn: bool | None = None, **model_options) -> FasterRCNN:
    """A Faster R-CNN (Mask R-CNN with `masks`) on one of our networks (any name in `resnet.list_models()`).

    num_classes counts the background, as torchvision's (11 for 10 object classes); it follows from
    `class_names` (the object classes) when only those are given; `category_ids` are the dataset's own ids of
    the classes (label k is category_ids[k - 1]), reported by predict beside the names. `backbone_weights`: our
    checkpoint or run directory, a `resnet weights` name, or a torchvision/timm file; with them BN is frozen
    (`frozen_bn`) and the last `trainable_stages` stages train (default: all but the first, as torchvision's 3
    of 5; without weights everything trains). `model_options`: the network's (shortcut, bottleneck_stride,
    base_width, in_channels, ...), ours (anchor_sizes, aspect_ratios, fpn_channels) and FasterRCNN/MaskRCNN's
    (min_size, max_size, image_mean, image_std, box_score_thresh, ...).
    """
    if head not in HEADS:
        raise ValueError(f"invalid head={head!r}; allowed: {', '.join(map(repr, HEADS))}")
    num_classes = _num_classes(num_classes, class_names)
    if category_ids is not None and len(category_ids) != num_classes - 1:
        raise ValueError(f"num_classes={num_classes} needs {num_classes - 1} category ids, not {len(category_ids)}")
    net_options, detector_options, rcnn_options = split_options(model_options)
    net, source = _backbone_net(backbone, net_options, backbone_weights)
    if trainable_stages is None:
        trainable_stages = len(net.stages) + 1 if source is None else len(net.stages) - 1
    check_trainable_stages(net, trainable_stages)
    channels = net.conv1.in_channels
    mean, std = getattr(net, "input_mean", None), getattr(net, "input_std", None)
    if mean is not None and std is None:  # weights trained on x - mean (ours): no division
        std = torch.ones(channels, 1, 1)
    rcnn_options.setdefault("image_mean", _per_channel(mean, channels, IMAGENET_MEAN))
    rcnn_options.setdefault("image_std", _per_channel(std, channels, IMAGENET_STD))
    spec = {"backbone": backbone, "head": head, "masks": bool(masks), "num_classes": num_classes,
            "class_names": list(class_names) if class_names is not None else None,
            "category_ids": [int(c) for c in category_ids] if category_ids is not None else None,
            "net_options": dict(net.options), "detector_options": detector_options, "rcnn_options": rcnn_options,
            "trainable_stages": trainable_stages, "frozen_bn": source is not None if frozen_bn is None else bool(frozen_bn),
            "backbone_weights": source}
    return build_detector(spec, net)


def _num_classes(num_classes: int | None, class_names: list[str] | None) -> int:
    if num_classes is None and class_names is None:
        raise ValueError("create_detector needs num_classes (object classes + 1 for the background) or class_names")
    if num_classes is None:
        num_classes = len(class_names) + 1
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(f"invalid num_classes={num_classes!r}; at least 2 (the background and one class)")
    if class_names is not None and len(class_names) != num_classes - 1:
        raise ValueError(f"num_classes={num_classes} counts the background, so it needs {num_classes - 1} class names, "
                         f"not {len(class_names)}")
    return num_classes


def build_detector(spec: dict, net: nn.Module | None = None) -> FasterRCNN:
    """The detector a spec (`model.spec`, `meta["detector"]`) describes; `net`: its backbone, weights loaded."""
    if net is None:
        net = build_model(spec["backbone"], **spec["net_options"])
    freeze_backbone(net, spec["trainable_stages"], spec["frozen_bn"])
    options = dict(spec["detector_options"])
    num_classes, masks = spec["num_classes"], spec["masks"]
    ratios = tuple(options.get("aspect_ratios", ASPECT_RATIOS))
    parts: dict = {}
    if spec["head"] == "fpn":
        body = FPNBackbone(net, options.get("fpn_channels", FPN_CHANNELS))
        sizes = options.get("anchor_sizes") or [[8 * s] for s in body.strides]
        names = body.featmap_names
        parts["box_roi_pool"] = MultiScaleRoIAlign(names, output_size=7, sampling_ratio=2)
        if masks:
            parts["mask_roi_pool"] = MultiScaleRoIAlign(names, output_size=14, sampling_ratio=2)
        parts["num_classes"] = num_classes
    else:
        body = C4Trunk(net)
        box_head = C4BoxHead(net)
        sizes = options.get("anchor_sizes") or [[body.stride * 2**k for k in range(1, 6)]]
        parts["box_roi_pool"] = MultiScaleRoIAlign(["0"], output_size=14, sampling_ratio=2)
        parts["box_head"] = box_head
        parts["box_predictor"] = FastRCNNPredictor(box_head.out_channels, num_classes)
        if masks:
            parts["mask_roi_pool"] = MultiScaleRoIAlign(["0"], output_size=14, sampling_ratio=2)
            parts["mask_head"] = C4MaskHead(box_head)
            parts["mask_predictor"] = MaskRCNNPredictor(box_head.out_channels, 256, num_classes)
    sizes = tuple(tuple(int(v) for v in level) for level in sizes)
    parts["rpn_anchor_generator"] = AnchorGenerator(sizes, (ratios,) * len(sizes))
    model = (MaskRCNN if masks else FasterRCNN)(body, **parts, **spec["rcnn_options"])
    model.spec = spec
    model.name = f"{'maskrcnn' if masks else 'fasterrcnn'}_{spec['head']}_{spec['backbone']}"
    model.options = {k: spec[k] for k in ("head", "masks", "num_classes")}
    names = spec.get("class_names") or [str(i) for i in range(1, num_classes)]
    ids = spec.get("category_ids") or list(range(1, num_classes))  # older checkpoints: the labels themselves
    model.meta = {"task": "detection", "detector": spec, "class_names": names, "classes": names, "category_ids": ids}
    return model


def detector_classes(model: nn.Module) -> list[str]:
    """The object classes, label 1 first (label 0 is the background)."""
    return list(model.meta["class_names"])


def detector_meta(model: nn.Module, **extra) -> dict:
    """The metadata a detector checkpoint holds (what `load_detector` rebuilds it from), plus `extra`."""
    net = unwrap(model)
    return {"model": net.name, "options": dict(net.options), **net.meta, **extra}


def save_detector(path: str | Path, model: nn.Module, **extra) -> Path:
    """The detector's weights and `detector_meta` as one .safetensors file (atomic)."""
    return save_weights(path, model, detector_meta(model, **extra))


def read_meta(path: str | Path) -> dict:
    """A checkpoint's metadata without loading its tensors ({} for a file that is not ours)."""
    import json

    from safetensors import safe_open

    try:
        with safe_open(str(weights_path(path)), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get(META_KEY, "{}"))
    except Exception:  # noqa: BLE001 - not a readable safetensors file: the caller's loader says why
        return {}
    return meta if isinstance(meta, dict) else {}


def is_detector_checkpoint(path: str | Path) -> bool:
    """Whether `path` (a .safetensors file or run directory) holds a detector, not a classifier."""
    try:
        return "detector" in read_meta(path)
    except FileNotFoundError:
        return False


def load_detector(path: str | Path, device: str | torch.device = "cpu", which: str = "best") -> FasterRCNN:
    """The detector saved at `path` (a .safetensors file or a run directory), in eval mode."""
    file = weights_path(path, which)
    state, meta, _ = load_weights(file)
    spec = meta.get("detector")
    if not isinstance(spec, dict):
        raise ValueError(f"{file}: not a detector checkpoint (no 'detector' in its metadata)")
    check_finite(state, str(file))
    try:
        model = build_detector(spec)
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"{file}: its metadata does not describe a detector we can build ({e})") from None
    load_state_dict_checked(model, state, str(file), model.name)
    return model.to(device).eval()


def detection_loss(model: nn.Module, images: list[torch.Tensor],
                   targets: list[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(the sum of torchvision's losses, to back-propagate; the losses by name, detached) in train mode.

    RPN objectness and box regression, the RoI heads' classification and box regression, and with masks
    the mask loss, each weighted 1 as in torchvision's references.
    """
    losses = model(images, targets)
    return sum(losses.values()), {k: v.detach() for k, v in losses.items()}


# torchvision's detectors and ours share every key name (our nets keep torchvision's `conv1`, `layer1`, ...,
# `downsample.0/.1`; FPNBackbone keeps `body` and `fpn`); the map says so once, prefix by prefix.
TORCHVISION_PREFIXES = {"backbone.body.": "backbone.body.", "backbone.fpn.": "backbone.fpn.", "rpn.": "rpn.",
                        "roi_heads.": "roi_heads."}


def from_torchvision(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """A state dict of torchvision's fasterrcnn/maskrcnn_resnet*_fpn with our key names for `model`.

    BN counters (`num_batches_tracked`, absent in FrozenBatchNorm2d) are added or dropped as `model` needs.
    """
    mapped = {}
    for key, value in state.items():
        prefix = next((p for p in TORCHVISION_PREFIXES if key.startswith(p)), None)
        if prefix is None:
            raise ValueError(f"unexpected key {key!r} in a torchvision detector state dict")
        mapped[TORCHVISION_PREFIXES[prefix] + key[len(prefix):]] = value
    own = model.state_dict()
    for key in [k for k in mapped if k.endswith("num_batches_tracked") and k not in own]:
        del mapped[key]
    for key in [k for k in own if k.endswith("num_batches_tracked") and k not in mapped]:
        mapped[key] = torch.zeros_like(own[key])
    return mapped


def load_torchvision_detector(model: nn.Module, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
    """Load a torchvision detector's state dict (e.g. fasterrcnn_resnet50_fpn's) into our detector, checked."""
    load_state_dict_checked(model, from_torchvision(state, model), source, model.name)
