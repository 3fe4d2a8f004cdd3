"""resnet: Deep Residual Learning for Image Recognition (He et al., 2015) in PyTorch."""

from __future__ import annotations

import importlib

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "load_model", "__version__"]
# create_model: resnet.models.build_model plus pretrained=NAME_OR_PATH; load_model: our checkpoints and published weights
_LAZY = {"create_model": "resnet.weights", "list_models": "resnet.models", "load_model": "resnet.weights"}


def __getattr__(name: str):
    """Import torch-backed names on first use, so that `resnet --help` starts at once."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'resnet' has no attribute {name!r}")
