"""resnet: Deep Residual Learning for Image Recognition (He et al., 2015) in PyTorch."""

from resnet.models import list_models
from resnet.checkpoint import load_model
from resnet.weights import create_model  # the registry's create_model, plus pretrained=NAME_OR_PATH

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "load_model", "__version__"]
