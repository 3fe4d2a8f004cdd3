"""Training: recipes, the loop, checkpoints and distributed set-up."""

from resnet.checkpoint import load_model
from resnet.train.loop import TrainingDiverged, train
from resnet.train.recipes import RECIPES, Recipe, get_recipe

__all__ = ["RECIPES", "Recipe", "TrainingDiverged", "get_recipe", "load_model", "train"]
