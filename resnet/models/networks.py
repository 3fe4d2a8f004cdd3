"""The networks of Table 1 (ImageNet) and section 4.2 (CIFAR), built from a per-name spec.

Both families share one class: a stem, a sequence of stages (torchvision's `layer1..layer4`,
the paper's conv2_x..conv5_x), global average pooling and a fully-connected classifier.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from resnet.models.blocks import BasicBlock, Bottleneck


@dataclass(frozen=True)
class NetworkSpec:
    """What distinguishes one network of the paper from another."""

    family: str  # "imagenet" (Table 1) or "cifar" (section 4.2)
    block: str  # "basic" or "bottleneck"
    blocks_per_stage: tuple[int, ...]
    widths: tuple[int, ...]  # filters of each stage before bottleneck expansion
    residual: bool = True  # False for the plain counterparts

    @property
    def depth(self) -> int:
        """Weighted layers: stem conv + convs in blocks + fc (the number in the net's name)."""
        convs_per_block = 3 if self.block == "bottleneck" else 2
        return 2 + convs_per_block * sum(self.blocks_per_stage)


class ResNet(nn.Module):
    """A residual (or plain) network; state-dict names follow torchvision."""

    frozen_stages: int | None = None  # fine-tuning (`--freeze N`): the stem and the first N stages are fixed

    def __init__(
        self,
        spec: NetworkSpec,
        num_classes: int = 1000,
        in_channels: int = 3,
        shortcut: str = "B",
        bottleneck_stride: str = "1x1",
        zero_init_residual: bool = False,
        zero_pad: str = "after",
    ) -> None:
        super().__init__()
        self.spec = spec
        block_cls = Bottleneck if spec.block == "bottleneck" else BasicBlock
        self.in_planes = spec.widths[0]
        if spec.family == "imagenet":  # 7x7/2 conv, 3x3/2 max pool
            self.conv1 = nn.Conv2d(in_channels, self.in_planes, 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
            stem_stride, first_stage = 4, 2
        else:  # 3x3 conv with 16 filters, no pooling
            self.conv1 = nn.Conv2d(in_channels, self.in_planes, 3, padding=1, bias=False)
            self.maxpool = nn.Identity()
            stem_stride, first_stage = 1, 2
        self.bn1 = nn.BatchNorm2d(self.in_planes)
        self.relu = nn.ReLU(inplace=True)

        self.stage_names: list[str] = []
        self.feature_info: list[dict] = []
        stride_so_far = stem_stride
        block_options = {"shortcut": shortcut if spec.residual else None, "zero_pad": zero_pad}
        if block_cls is Bottleneck:
            block_options["stride_at"] = bottleneck_stride
        for i, (blocks, width) in enumerate(zip(spec.blocks_per_stage, spec.widths)):
            stride = 1 if i == 0 else 2  # down-sampling in the first block of conv3_1, conv4_1, ...
            stride_so_far *= stride
            self.add_module(f"layer{i + 1}", self._make_stage(block_cls, width, blocks, stride, block_options))
            name = f"conv{first_stage + i}_x"
            self.stage_names.append(name)
            self.feature_info.append(
                {"name": name, "module": f"layer{i + 1}", "channels": self.in_planes, "stride": stride_so_far}
            )
        self.num_features = self.in_planes
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.num_features, num_classes)
        self._init_weights(zero_init_residual)

    def _make_stage(self, block_cls: type, width: int, blocks: int, stride: int, options: dict) -> nn.Sequential:
        """One stage (conv{n}_x): `blocks` blocks, the first one changing resolution/width."""
        layers = []
        for b in range(blocks):
            layers.append(block_cls(self.in_planes, width, stride if b == 0 else 1, **options))
            self.in_planes = width * block_cls.expansion
        return nn.Sequential(*layers)

    def _init_weights(self, zero_init_residual: bool) -> None:
        """He (Kaiming) normal init for convs, BN gamma=1 beta=0; optionally zero the last BN gamma."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)) and m.residual:
                    nn.init.zeros_(m.last_bn().weight)

    @property
    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, info["module"]) for info in self.feature_info]

    def frozen_modules(self) -> list[nn.Module]:
        """The stem and the first `frozen_stages` stages, when some are frozen."""
        if self.frozen_stages is None:
            return []
        return [self.conv1, self.bn1, *self.stages[:self.frozen_stages]]

    def train(self, mode: bool = True) -> ResNet:
        """nn.Module.train, except that frozen modules stay in eval mode (their BN statistics do not move)."""
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """conv1 (+ max pool for ImageNet nets)."""
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each stage's output by the paper's name (conv2_x, conv3_x, ...), for use as a backbone."""
        x = self.stem(x)
        features = {}
        for name, stage in zip(self.stage_names, self.stages):
            x = stage(x)
            features[name] = x
        return features

    def classify(self, fmap: torch.Tensor) -> torch.Tensor:
        """Global average pool + fc: works on a feature map of any spatial size."""
        return self.fc(torch.flatten(self.avgpool(fmap), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.classify(x)
