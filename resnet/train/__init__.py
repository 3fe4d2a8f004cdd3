"""Training: recipes, the loop, schedules and distributed set-up."""

from __future__ import annotations

import importlib

__all__ = ["RECIPES", "Recipe", "TrainingDiverged", "get_recipe", "load_model", "train"]
_LAZY = {"RECIPES": "resnet.train.recipes", "Recipe": "resnet.train.recipes", "get_recipe": "resnet.train.recipes",
         "TrainingDiverged": "resnet.train.loop", "train": "resnet.train.loop", "load_model": "resnet.weights"}


def __getattr__(name: str):
    """Import the loop (and torch) only when it is used: the CLI reads recipes without it."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'resnet.train' has no attribute {name!r}")
