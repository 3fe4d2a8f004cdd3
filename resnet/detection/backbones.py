"""Our networks as detection backbones: the paper's C4 split (Appendix A) and an FPN over every stage.

C4 (Faster R-CNN as the paper used it): the stem and every stage but the last run once per image
(`C4Trunk`; stride 16 for the ImageNet nets, conv1..conv4_x), RoIAlign 14x14 cuts each proposal out of
that map, and the last stage (conv5_x) runs on every RoI as the box head (`C4BoxHead`), followed by
global average pooling. Its first block strides by 2, so a 14x14 RoI leaves it 7x7. The CIFAR nets have
three stages: the same split one stage earlier (trunk conv1..conv3_x, stride 2; conv4_x per RoI).

FPN (torchvision's `resnet_fpn_backbone`, for every net of ours): each stage's output (conv2_x..conv5_x,
or conv2_x..conv4_x for CIFAR nets) goes into `torchvision.ops.FeaturePyramidNetwork` with the extra
max-pool level; `FPNBackbone` keeps torchvision's key names (`body.conv1`, `body.layer1`, `fpn.*`).

Freezing (`freeze_backbone`): the stem and the first stages get no gradients and their BN becomes
torchvision's FrozenBatchNorm2d (an affine layer with fixed statistics); with pretrained weights every BN
is frozen that way, as the paper did ("BN layers are fixed" during fine-tuning for detection).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from resnet.models.networks import ResNet

FPN_CHANNELS = 256  # torchvision's and the FPN paper's width of every pyramid level


def freeze_bn(module: nn.Module) -> nn.Module:
    """Every BatchNorm2d inside `module` replaced by a FrozenBatchNorm2d holding its statistics and affine."""
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(frozen, name).copy_(getattr(module, name).detach())
        return frozen
    for name, child in module.named_children():
        setattr(module, name, freeze_bn(child))
    return module


def check_trainable_stages(net: ResNet, trainable_stages: int) -> None:
    """0 .. stages + 1: how many of the last stages train (stages + 1 also trains the stem, as torchvision's 5)."""
    limit = len(net.stages) + 1
    if not isinstance(trainable_stages, int) or isinstance(trainable_stages, bool) or not 0 <= trainable_stages <= limit:
        raise ValueError(f"invalid trainable_stages={trainable_stages!r} for {getattr(net, 'name', 'the net')}: "
                         f"0 to {limit} ({len(net.stages)} stages, {limit} also trains the stem)")


def freeze_backbone(net: ResNet, trainable_stages: int, frozen_bn: bool) -> None:
    """Only the last `trainable_stages` stages train; the rest (stem first) get no gradients and frozen BN.

    `frozen_bn` freezes the BN of the trainable stages as well (pretrained weights: the paper's choice).
    """
    check_trainable_stages(net, trainable_stages)
    fixed = len(net.stages) - trainable_stages  # stages frozen from the first; -1: none, and the stem trains
    frozen = ([net.conv1, net.bn1] if fixed >= 0 else []) + net.stages[:max(fixed, 0)]
    for module in frozen:
        module.requires_grad_(False)
    if frozen_bn:
        freeze_bn(net)
        return
    if fixed >= 0:
        net.bn1 = freeze_bn(net.bn1)
    for info in net.feature_info[:max(fixed, 0)]:
        freeze_bn(getattr(net, info["module"]))


class FPNBackbone(nn.Module):
    """Our net's stage outputs through a FeaturePyramidNetwork with a max-pool level on top.

    Returns {"0": P2, "1": P3, ..., "pool": P_last+1}, each with `out_channels` channels, as
    torchvision's BackboneWithFPN (whose IntermediateLayerGetter cannot run our net: it calls the
    children in registration order, and ours registers max pool before bn1).
    """

    def __init__(self, net: ResNet, out_channels: int = FPN_CHANNELS) -> None:
        super().__init__()
        net.fc = nn.Identity()  # no classifier in a detector (torchvision's body drops avgpool and fc too)
        self.body = net
        self.fpn = FeaturePyramidNetwork([info["channels"] for info in net.feature_info], out_channels,
                                         extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels
        self.strides = [info["stride"] for info in net.feature_info] + [2 * net.feature_info[-1]["stride"]]

    @property
    def featmap_names(self) -> list[str]:
        """The names RoIAlign pools from (every level but the max-pool one, as torchvision)."""
        return [str(i) for i in range(len(self.body.feature_info))]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.body.forward_features(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features.values())))


class C4Trunk(nn.Module):
    """The stem and every stage but the last, run once per image: {"0": conv4_x} (stride 16; CIFAR conv3_x)."""

    def __init__(self, net: ResNet) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        infos = net.feature_info[:-1]
        for info in infos:
            self.add_module(info["module"], getattr(net, info["module"]))
        self.stage_names = [info["name"] for info in infos]
        self.stage_modules = [info["module"] for info in infos]
        self.out_channels = infos[-1]["channels"]
        self.stride = infos[-1]["stride"]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in self.stage_modules:
            x = getattr(self, name)(x)
        return OrderedDict([("0", x)])


class C4BoxHead(nn.Module):
    """The last stage (conv5_x; CIFAR conv4_x) on every RoI, then global average pooling: [R, C] features."""

    def __init__(self, net: ResNet) -> None:
        super().__init__()
        last = net.feature_info[-1]
        self.stage_name, self.stage_module = last["name"], last["module"]
        self.add_module(last["module"], getattr(net, last["module"]))
        self.out_channels = last["channels"]
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    @property
    def stage(self) -> nn.Sequential:
        return getattr(self, self.stage_module)

    def forward(self, rois: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.avgpool(self.stage(rois)), 1)


class C4MaskHead(nn.Module):
    """Mask R-CNN's C4 mask head (Mask R-CNN paper, Fig. 4 left): the box head's conv5_x, shared, on the
    positive RoIs; its 7x7 output goes to torchvision's MaskRCNNPredictor (2x deconvolution to 14x14).

    The stage is held by reference, not registered, so its weights live once in the state dict (under the
    box head). torchvision's RoIHeads calls the mask branch separately, so conv5_x runs a second time on the
    positive RoIs (detectron2 reuses the box branch's output; the result is the same).
    """

    def __init__(self, box_head: C4BoxHead) -> None:
        super().__init__()
        self._box_head = [box_head]  # a list: not a submodule
        self.out_channels = box_head.out_channels

    def forward(self, rois: torch.Tensor) -> torch.Tensor:
        return self._box_head[0].stage(rois)
