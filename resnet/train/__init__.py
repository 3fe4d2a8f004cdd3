"""Training: recipes, the loop, checkpoints and distributed set-up."""

from resnet.train.checkpoint import load_model

__all__ = ["load_model"]
