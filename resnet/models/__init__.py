"""Networks: blocks and shortcuts, the Table 1 / section 4.2 specs, and the registry."""

from resnet.models.blocks import BasicBlock, Bottleneck
from resnet.models.networks import NetworkSpec, ResNet
from resnet.models.registry import SPECS, build_model, get_spec, list_models

__all__ = ["BasicBlock", "Bottleneck", "NetworkSpec", "ResNet", "SPECS", "build_model", "get_spec", "list_models"]
